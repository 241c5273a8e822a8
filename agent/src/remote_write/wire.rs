//! Remote-write 1.0 on the wire: a `prometheus.WriteRequest` protobuf
//! (only the fields 1.0 defines for samples; written by hand with
//! prost-derive, so no protoc is needed), snappy block-compressed.
use prost::Message;

use crate::series::Labels;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name, names unique (the spec's requirement).
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// In timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The HTTP body: the encoded request, snappy block format (not framed).
pub fn encode(series: &[(Labels, Vec<(i64, f64)>)]) -> Result<Vec<u8>, snap::Error> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| TimeSeries {
                labels: labels
                    .0
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(t, v)| Sample { value: v, timestamp: t })
                    .collect(),
            })
            .collect(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// The inverse of [`encode`] (tests and test receivers).
pub fn decode(body: &[u8]) -> Result<WriteRequest, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_matches_the_protobuf_layout() {
        let l = Labels::new([("__name__".into(), "up".into()), ("job".into(), "x".into())]);
        let body = encode(&[(l, vec![(1000, 1.0), (2000, f64::NAN)])]).unwrap();
        let req = decode(&body).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        assert_eq!(req.timeseries[0].labels[0].name, "__name__");
        assert_eq!(req.timeseries[0].samples[1].timestamp, 2000);
        assert!(req.timeseries[0].samples[1].value.is_nan());
        // Field numbers and wire types as in prometheus/prompb/types.proto:
        // Sample{double value = 1; int64 timestamp = 2}.
        let s = Sample {
            value: 1.0,
            timestamp: 5,
        }
        .encode_to_vec();
        assert_eq!(s, [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 5]);
        let lab = Label {
            name: "a".into(),
            value: "b".into(),
        }
        .encode_to_vec();
        assert_eq!(lab, [0x0a, 1, b'a', 0x12, 1, b'b']);
    }
}
