//! Struct offsets for the request uprobe from DWARF debug information, for
//! nginx builds the offset table does not know. nginx's own `configure`
//! compiles with `-g`, so a build from source keeps `.debug_info` unless it
//! was stripped; a distribution's separate debug file (found by build id
//! under /usr/lib/debug/.build-id in the process's root) carries the same.
//!
//! Read: the members the uprobe reads in `struct ngx_http_request_s`,
//! `struct ngx_connection_s`, `ngx_time_t` and `ngx_http_core_srv_conf_t`,
//! from the first compile unit that defines all four (ngx_http_request.c
//! does). Every member must be found, at a constant location; anything else
//! is an error, never a guess.
use std::collections::HashMap;

use agent_common::NginxOffsets;
use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset, constants};
use object::{Object, ObjectSection};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Why DWARF gave no offsets.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("no DWARF debug information (.debug_info)")]
    Absent,
    #[error("compressed debug sections are not read")]
    Compressed,
    #[error("DWARF unreadable: {0}")]
    Parse(#[from] gimli::Error),
    #[error("DWARF has no compile unit defining {0}")]
    NoType(&'static str),
    #[error("DWARF: member {member} of {ty}: {why}")]
    Member {
        ty: &'static str,
        member: &'static str,
        why: &'static str,
    },
}

/// The types looked up. `ngx_time_t` and `ngx_http_core_srv_conf_t` are
/// typedefs of anonymous structs; the other two are struct tags.
const REQUEST: &str = "ngx_http_request_s";
const CONNECTION: &str = "ngx_connection_s";
const TIME: &str = "ngx_time_t";
const CORE_SRV_CONF: &str = "ngx_http_core_srv_conf_t";

/// Offsets (all but the two symbol distances, which come from the symbol
/// table) from the DWARF in `file`.
pub fn offsets<'d>(file: &object::File<'d>) -> Result<NginxOffsets, DwarfError> {
    if file.section_by_name(".debug_info").is_none() {
        return Err(DwarfError::Absent);
    }
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let compressed = file.sections().any(|s| {
        s.name()
            .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"))
            && !matches!(
                s.compressed_file_range().map(|r| r.format),
                Ok(object::CompressionFormat::None)
            )
    });
    if compressed {
        return Err(DwarfError::Compressed);
    }
    let load = |id: gimli::SectionId| -> Result<R<'d>, gimli::Error> {
        let data = file
            .section_by_name(id.name())
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    let mut units = dwarf.units();
    let mut missing = REQUEST;
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let names = named_types(&dwarf, &unit)?;
        let all = [REQUEST, CONNECTION, TIME, CORE_SRV_CONF];
        if let Some(m) = all.iter().find(|n| !names.contains_key(**n)) {
            missing = m;
            continue;
        }
        let t = Types {
            dwarf: &dwarf,
            unit: &unit,
            names: &names,
        };
        return t.offsets();
    }
    Err(DwarfError::NoType(missing))
}

/// A member as DWARF places it: byte offset, and for a bit-field the bit
/// (from the least significant bit of that byte on little-endian) and width.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Member {
    byte: u64,
    bit: Option<u64>,
    type_at: Option<UnitOffset>,
}

struct Types<'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    unit: &'a gimli::Unit<R<'d>>,
    names: &'a HashMap<String, UnitOffset>,
}

impl Types<'_, '_> {
    fn offsets(&self) -> Result<NginxOffsets, DwarfError> {
        let r = |m| self.byte(REQUEST, m);
        let c = |m| self.byte(CONNECTION, m);
        // headers_out.status: a member of the (typedef'd, anonymous) struct
        // that is the type of r->headers_out.
        let headers_out = self.member_at(REQUEST, self.names[REQUEST], "headers_out")?;
        let status_in = match headers_out.type_at {
            Some(t) => self.member_at(REQUEST, self.strip(t)?, "status")?,
            None => return Err(member_err(REQUEST, "headers_out", "no type")),
        };
        let logged = self.member_at(REQUEST, self.names[REQUEST], "logged")?;
        let Some(bit) = logged.bit else {
            return Err(member_err(REQUEST, "logged", "not a bit-field"));
        };
        let logged_bit = logged.byte * 8 + bit;
        Ok(NginxOffsets {
            req_connection: r("connection")?,
            req_pool: r("pool")?,
            req_status: small(REQUEST, "status", headers_out.byte + status_in.byte)?,
            req_err_status: r("err_status")?,
            req_method: r("method")?,
            req_http_version: r("http_version")?,
            req_request_length: r("request_length")?,
            req_start_sec: r("start_sec")?,
            req_start_msec: r("start_msec")?,
            req_stream: r("stream")?,
            req_header_size: r("header_size")?,
            req_logged_byte: small(REQUEST, "logged", logged_bit / 8)?,
            req_logged_mask: 1 << (logged_bit % 8),
            req_srv_conf: r("srv_conf")?,
            conn_sent: c("sent")?,
            conn_ssl: c("ssl")?,
            conn_local_sockaddr: c("local_sockaddr")?,
            time_sec: self.byte(TIME, "sec")?,
            time_msec: self.byte(TIME, "msec")?,
            cscf_server_name: self.byte(CORE_SRV_CONF, "server_name")?,
            valid: 1,
            ..NginxOffsets::default()
        })
    }

    fn byte(&self, ty: &'static str, name: &'static str) -> Result<u32, DwarfError> {
        let m = self.member_at(ty, self.names[ty], name)?;
        if m.bit.is_some() {
            return Err(member_err(ty, name, "a bit-field where a whole field was expected"));
        }
        small(ty, name, m.byte)
    }

    /// Member `name` of the structure at `at`.
    fn member_at(&self, ty: &'static str, at: UnitOffset, name: &'static str) -> Result<Member, DwarfError> {
        let mut tree = self.unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != constants::DW_TAG_member || self.name_of(e)?.as_deref() != Some(name) {
                continue;
            }
            return member_of(e).map_err(|why| member_err(ty, name, why));
        }
        Err(member_err(ty, name, "not found"))
    }

    /// The structure a type reference names, through typedefs and
    /// qualifiers.
    fn strip(&self, mut at: UnitOffset) -> Result<UnitOffset, DwarfError> {
        for _ in 0..8 {
            let e = self.unit.entry(at)?;
            if e.tag() == constants::DW_TAG_structure_type {
                return Ok(at);
            }
            match e.attr_value(constants::DW_AT_type)? {
                Some(AttributeValue::UnitRef(t)) => at = t,
                _ => break,
            }
        }
        Err(DwarfError::NoType("the structure of headers_out"))
    }

    fn name_of(&self, e: &gimli::DebuggingInformationEntry<R<'_>>) -> Result<Option<String>, DwarfError> {
        name_of(self.dwarf, self.unit, e)
    }
}

fn member_err(ty: &'static str, member: &'static str, why: &'static str) -> DwarfError {
    DwarfError::Member { ty, member, why }
}

/// Offsets the uprobe takes are u32 and nginx's structs are a few KB: a
/// larger one is not nginx's layout.
fn small(ty: &'static str, member: &'static str, v: u64) -> Result<u32, DwarfError> {
    if v > 1 << 16 {
        return Err(member_err(ty, member, "offset beyond 64 KiB"));
    }
    Ok(v as u32)
}

fn member_of(e: &gimli::DebuggingInformationEntry<R<'_>>) -> Result<Member, &'static str> {
    let constant = |v: Option<AttributeValue<R<'_>>>| match v {
        Some(AttributeValue::Udata(u)) => Some(u),
        Some(AttributeValue::Data1(u)) => Some(u64::from(u)),
        Some(AttributeValue::Data2(u)) => Some(u64::from(u)),
        Some(AttributeValue::Data4(u)) => Some(u64::from(u)),
        Some(AttributeValue::Data8(u)) => Some(u),
        Some(AttributeValue::Sdata(s)) => u64::try_from(s).ok(),
        _ => None,
    };
    let attr = |a| e.attr_value(a).map_err(|_| "unreadable attribute");
    let type_at = match attr(constants::DW_AT_type)? {
        Some(AttributeValue::UnitRef(t)) => Some(t),
        _ => None,
    };
    // DWARF 4+: the bit offset from the struct's start.
    if let Some(bits) = constant(attr(constants::DW_AT_data_bit_offset)?) {
        return Ok(Member {
            byte: bits / 8,
            bit: Some(bits % 8),
            type_at,
        });
    }
    let location = attr(constants::DW_AT_data_member_location)?;
    let byte = match location {
        None => 0,
        Some(v) => constant(Some(v)).ok_or("location is not a constant")?,
    };
    // DWARF 2/3 bit-fields: bit offset from the most significant bit of a
    // storage unit of DW_AT_byte_size bytes at `byte` (x86_64: little-endian).
    let bit_offset = constant(attr(constants::DW_AT_bit_offset)?);
    let bit_size = constant(attr(constants::DW_AT_bit_size)?);
    match (bit_offset, bit_size) {
        (Some(off), Some(size)) => {
            let unit = constant(attr(constants::DW_AT_byte_size)?).ok_or("bit-field without byte size")?;
            let from_lsb = (unit * 8)
                .checked_sub(off + size)
                .ok_or("bit-field outside its storage unit")?;
            let bits = byte * 8 + from_lsb;
            Ok(Member {
                byte: bits / 8,
                bit: Some(bits % 8),
                type_at,
            })
        }
        (None, Some(_)) => Ok(Member {
            byte,
            bit: Some(0),
            type_at,
        }),
        _ => Ok(Member {
            byte,
            bit: None,
            type_at,
        }),
    }
}

fn name_of(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    e: &gimli::DebuggingInformationEntry<R<'_>>,
) -> Result<Option<String>, DwarfError> {
    let Some(v) = e.attr_value(constants::DW_AT_name)? else {
        return Ok(None);
    };
    let s = dwarf.attr_string(unit, v)?;
    Ok(Some(String::from_utf8_lossy(s.slice()).into_owned()))
}

/// The unit's top-level definitions of the types looked up, by name: struct
/// tags (not declarations) and typedefs (to what they name).
fn named_types(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
) -> Result<HashMap<String, UnitOffset>, DwarfError> {
    let mut out = HashMap::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        let tag = e.tag();
        if tag != constants::DW_TAG_structure_type && tag != constants::DW_TAG_typedef {
            continue;
        }
        let Some(name) = name_of(dwarf, unit, e)? else {
            continue;
        };
        let wanted = if tag == constants::DW_TAG_structure_type {
            name == REQUEST || name == CONNECTION
        } else {
            name == TIME || name == CORE_SRV_CONF
        };
        if !wanted || out.contains_key(&name) {
            continue;
        }
        if tag == constants::DW_TAG_structure_type {
            if e.attr_value(constants::DW_AT_declaration)?.is_some() {
                continue;
            }
            out.insert(name, e.offset());
        } else if let Some(AttributeValue::UnitRef(t)) = e.attr_value(constants::DW_AT_type)?
            && unit.entry(t)?.tag() == constants::DW_TAG_structure_type
        {
            out.insert(name, t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ngxprobe_e2e::nginx_dev::NginxDev;

    fn parse(path: &std::path::Path) -> Result<NginxOffsets, DwarfError> {
        let data = std::fs::read(path).unwrap();
        offsets(&object::File::parse(&*data).unwrap())
    }

    fn debian_table() -> NginxOffsets {
        super::super::nginx_build::debian_1_22_1_table()
    }

    /// The three sources agree on Debian's build: the offset table, the C
    /// compiler's offsetof() on nginx-dev's headers (Debian's configure
    /// flags), and the DWARF gcc writes for those headers (versions 4 and
    /// 5: the `logged` bit-field is described differently).
    #[test]
    fn dwarf_offsetof_and_the_table_agree_on_debians_build() {
        let Some(dev) = NginxDev::require() else {
            return;
        };
        let table = debian_table();
        let c = dev.offsetof_table().expect("offsetof program");
        let by_name = |n: &str| c[n] as u32;
        let from_c = NginxOffsets {
            req_connection: by_name("req_connection"),
            req_pool: by_name("req_pool"),
            req_status: by_name("req_status"),
            req_err_status: by_name("req_err_status"),
            req_method: by_name("req_method"),
            req_http_version: by_name("req_http_version"),
            req_request_length: by_name("req_request_length"),
            req_start_sec: by_name("req_start_sec"),
            req_start_msec: by_name("req_start_msec"),
            req_stream: by_name("req_stream"),
            req_header_size: by_name("req_header_size"),
            req_srv_conf: by_name("req_srv_conf"),
            conn_sent: by_name("conn_sent"),
            conn_ssl: by_name("conn_ssl"),
            conn_local_sockaddr: by_name("conn_local_sockaddr"),
            time_sec: by_name("time_sec"),
            time_msec: by_name("time_msec"),
            cscf_server_name: by_name("cscf_server_name"),
            // A bit-field has no offsetof(): only DWARF gives it.
            req_logged_byte: table.req_logged_byte,
            req_logged_mask: table.req_logged_mask,
            ..table
        };
        assert_eq!(from_c, table, "offsetof() on Debian's headers vs the table");
        for version in [4, 5] {
            let so = dev.debug_object(version).expect("compile with -g");
            let got = parse(&so).unwrap_or_else(|e| panic!("DWARF {version}: {e}"));
            assert_eq!(got, table, "DWARF {version} vs the table");
        }
    }

    /// No debug information, or compressed sections: an error that says
    /// which, never offsets.
    #[test]
    fn stripped_and_compressed_debug_info_are_refused() {
        let Some(dev) = NginxDev::require() else {
            return;
        };
        let so = dev.debug_object(5).expect("compile with -g");
        let stripped = so.with_extension("stripped");
        let compressed = so.with_extension("compressed");
        let objcopy = |args: &[&str], out: &std::path::Path| {
            let ok = std::process::Command::new("objcopy")
                .args(args)
                .arg(&so)
                .arg(out)
                .status()
                .expect("objcopy");
            assert!(ok.success());
        };
        objcopy(&["--strip-debug"], &stripped);
        objcopy(&["--compress-debug-sections=zlib"], &compressed);
        assert!(matches!(parse(&stripped), Err(DwarfError::Absent)));
        assert!(matches!(parse(&compressed), Err(DwarfError::Compressed)));
        // Debian's own nginx is stripped.
        if let Ok(data) = std::fs::read("/usr/sbin/nginx") {
            let f = object::File::parse(&*data).unwrap();
            assert!(matches!(offsets(&f), Err(DwarfError::Absent)));
        }
    }
}
