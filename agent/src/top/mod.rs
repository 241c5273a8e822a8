//! `ngxprobe top`: a live terminal view of a running agent, one row per
//! nginx instance and listener, refreshed every interval.
//!
//! A client of the agent's PromQL HTTP API only (the same bounded client as
//! `ngxprobe query --addr` and `diagnose`): a fetch thread asks the queries
//! of [`rows::queries`] once per interval and hands the answers to the
//! screen loop. The screen loop never waits on the network: it polls keys
//! and takes what the fetch thread has sent, if anything, so quitting is
//! immediate whatever the agent does; the fetch thread is not joined (it
//! ends with the process). Every refresh is bounded by [`FETCH_TIMEOUT`], so
//! a dead or hung agent is said on screen within an interval plus that.
//! Everything but the drawing is in [`rows`] (pure, unit-tested).
pub mod rows;

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::compat::duration::parse_ms;
use crate::query::cli::{ApiClient, VectorRow, instant_query_path, parse_vector};
use rows::{Field, Row, SortKey};

pub struct Options {
    /// The agent, e.g. `http://127.0.0.1:9113`.
    pub url: String,
    /// How often the screen is refreshed (a Prometheus duration).
    pub interval: String,
    /// Rates and increases are taken over this window (a Prometheus duration).
    pub window: String,
}

/// Longest one refresh may take (connect included, all its queries): past
/// it the agent is reported unreachable and the next refresh starts.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What one refresh brought: the answers, or why the agent could not be asked.
#[derive(Debug)]
enum Fetched {
    Answers {
        answers: Vec<(Field, Vec<VectorRow>)>,
        /// The first query that failed while others answered.
        error: Option<String>,
    },
    Unreachable(String),
}

/// Runs the view until `q`, Esc or Ctrl-C. The terminal is restored on
/// every way out, panics included (ratatui's panic hook).
pub fn run(opts: &Options) -> Result<(), String> {
    let interval = duration(&opts.interval, "--interval")?;
    let window_ms = parse_ms(&opts.window).filter(|ms| *ms > 0);
    if window_ms.is_none() {
        return Err(format!(
            "--window {:?}: not a positive duration (e.g. 10s)",
            opts.window
        ));
    }
    let addr = crate::diagnose::addr_from_url(&opts.url)?;
    let rx = spawn_fetcher(addr, rows::queries(&opts.window), interval)?;
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let result = screen_loop(&mut terminal, &rx, opts, interval);
    ratatui::restore();
    result
}

fn duration(text: &str, flag: &str) -> Result<Duration, String> {
    match parse_ms(text) {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("{flag} {text:?}: not a positive duration (e.g. 1s)")),
    }
}

/// Asks the queries once per `interval` (starting at once) and sends each
/// refresh; stops when the screen is gone. The thread is never joined: when
/// the screen loop ends the process exits, whatever the thread is waiting on.
fn spawn_fetcher(addr: String, queries: Vec<(Field, String)>, interval: Duration) -> Result<Receiver<Fetched>, String> {
    let api = ApiClient::new(FETCH_TIMEOUT)?;
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                let fetched = api.block_on(fetch(&api, &addr, &queries));
                // Blocks only this thread, and only while the screen is
                // alive and has not taken the previous refresh yet.
                if tx.send(fetched).is_err() {
                    return;
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .map_err(|e| format!("cannot start the fetch thread: {e}"))?;
    Ok(rx)
}

/// One refresh: the queries in turn, all of it within [`FETCH_TIMEOUT`].
/// The first transport error ends it (the agent is unreachable; the other
/// queries would fail the same way); an API error fails that query only.
async fn fetch(api: &ApiClient, addr: &str, queries: &[(Field, String)]) -> Fetched {
    let all = async {
        let mut answers = Vec::new();
        let mut error = None;
        for (f, q) in queries {
            let body = api.get(addr, &instant_query_path(q)?).await?;
            match parse_vector(addr, q, &body) {
                Ok(v) => answers.push((*f, v)),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        Ok::<_, String>((answers, error))
    };
    match tokio::time::timeout(FETCH_TIMEOUT, all).await {
        Ok(Ok((answers, error))) => Fetched::Answers { answers, error },
        Ok(Err(e)) => Fetched::Unreachable(e),
        Err(_) => Fetched::Unreachable(format!(
            "no answer within {}",
            crate::compat::PromDuration::from_millis(FETCH_TIMEOUT.as_millis() as u64)
        )),
    }
}

/// What the screen shows between refreshes.
struct State {
    rows: Vec<Row>,
    sort: SortKey,
    /// Wall-clock time of the last answer.
    updated: Option<SystemTime>,
    /// Why the agent could not be read, if the last refresh failed.
    unreachable: Option<String>,
    /// A query failed while others answered.
    query_error: Option<String>,
    /// When the fetch thread last sent anything.
    heard: Instant,
}

impl State {
    /// The line above the table: the agent unreachable (from the last
    /// refresh, or because no refresh came back for longer than any should
    /// take), else a failed query, else nothing.
    fn problem(&self, opts: &Options, interval: Duration, now: Instant) -> Option<String> {
        let overdue = interval + FETCH_TIMEOUT + Duration::from_secs(1);
        let silent = now.saturating_duration_since(self.heard);
        let reason = match &self.unreachable {
            Some(r) => Some(r.clone()),
            None if silent > overdue => Some(format!("no refresh for {}s", silent.as_secs())),
            None => None,
        };
        if let Some(r) = reason {
            let shown = self
                .updated
                .map_or("no data yet".to_string(), |t| format!("table from {}", clock(t)));
            return Some(format!(
                "agent at {} unreachable: {r}, retrying every {} ({shown})",
                opts.url, opts.interval
            ));
        }
        self.query_error.as_ref().map(|e| format!("a query failed: {e}"))
    }

    fn take(&mut self, f: Fetched, now: Instant) {
        self.heard = now;
        match f {
            Fetched::Answers { answers, error } => {
                self.unreachable = None;
                self.query_error = error;
                // Every query failed (the API answered, but not usefully):
                // keep the last table rather than blank it; the error says why.
                if !answers.is_empty() || self.query_error.is_none() {
                    self.rows = rows::build(&answers);
                    rows::sort(&mut self.rows, self.sort);
                    self.updated = Some(SystemTime::now());
                }
            }
            Fetched::Unreachable(e) => self.unreachable = Some(e),
        }
    }
}

fn screen_loop(
    terminal: &mut DefaultTerminal,
    rx: &Receiver<Fetched>,
    opts: &Options,
    interval: Duration,
) -> Result<(), String> {
    let mut st = State {
        rows: Vec::new(),
        sort: SortKey::Rate,
        updated: None,
        unreachable: None,
        query_error: None,
        heard: Instant::now(),
    };
    loop {
        // Never waits on the fetch thread: takes a refresh if one is there.
        match rx.try_recv() {
            Ok(f) => st.take(f, Instant::now()),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return Err("the fetch thread stopped".into()),
        }
        let problem = st.problem(opts, interval, Instant::now());
        terminal
            .draw(|f| draw(f, &st, problem.as_deref(), opts))
            .map_err(|e| format!("cannot draw: {e}"))?;
        // The only wait of the loop: keys (redraws at least every 100 ms).
        if event::poll(Duration::from_millis(100)).map_err(|e| e.to_string())?
            && let Event::Key(k) = event::read().map_err(|e| e.to_string())?
            && k.kind == KeyEventKind::Press
        {
            match k.code {
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char(c) => {
                    if let Some(s) = SortKey::from_key(c) {
                        st.sort = s;
                        rows::sort(&mut st.rows, s);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `HH:MM:SS` UTC of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn draw(f: &mut Frame, st: &State, problem: Option<&str>, opts: &Options) {
    let [title, problem_line, table, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let updated = st.updated.map_or("never".to_string(), clock);
    f.render_widget(
        Paragraph::new(format!(
            "ngxprobe top  agent {}  every {}, rates over {}  sort: {}  updated {updated}",
            opts.url,
            opts.interval,
            opts.window,
            st.sort.name()
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    if let Some(p) = problem {
        f.render_widget(
            Paragraph::new(p).style(Style::new().add_modifier(Modifier::REVERSED)),
            problem_line,
        );
    }

    let body: Vec<Vec<String>> = st.rows.iter().map(rows::cells).collect();
    let sorted_col = sort_column(st.sort);
    let header: Vec<String> = rows::HEADER
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if Some(i) == sorted_col {
                format!("{h}*")
            } else {
                h.to_string()
            }
        })
        .collect();
    let last = header.len() - 1;
    let widths: Vec<Constraint> = (0..header.len())
        .map(|i| {
            if i == last {
                return Constraint::Fill(1);
            }
            let w = body.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max();
            Constraint::Length(w.unwrap_or(0) as u16)
        })
        .collect();
    let t = Table::new(
        body.into_iter().map(|r| TableRow::new(r.into_iter().map(Cell::from))),
        widths,
    )
    .header(TableRow::new(header.into_iter().map(Cell::from)).style(Style::new().add_modifier(Modifier::BOLD)));
    f.render_widget(t, table);

    let keys: Vec<String> = SortKey::KEYS.iter().map(|(k, _, n)| format!("{k} {n}")).collect();
    f.render_widget(
        Paragraph::new(Line::from(format!("sort: {}   q quit", keys.join("  ")))),
        help,
    );
}

/// The header column a sort key sorts by.
fn sort_column(k: SortKey) -> Option<usize> {
    let name = match k {
        SortKey::Rate => "REQ/S",
        SortKey::Errors => "5XX",
        SortKey::Latency => "P99",
        SortKey::Queue => "QUEUE",
        SortKey::Drops => "DROPS",
        SortKey::Retransmits => "RETRANS",
        SortKey::Resets => "RST_OUT",
        SortKey::Name => "INSTANCE",
    };
    rows::HEADER.iter().position(|h| *h == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            url: "http://127.0.0.1:9".into(),
            interval: "1s".into(),
            window: "10s".into(),
        }
    }

    fn queries() -> Vec<(Field, String)> {
        rows::queries("10s")
    }

    #[test]
    fn a_closed_port_is_unreachable_at_once() {
        // A port bound then released: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let api = ApiClient::new(FETCH_TIMEOUT).unwrap();
        let t = Instant::now();
        let got = api.block_on(fetch(&api, &addr, &queries()));
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        match got {
            Fetched::Unreachable(e) => assert!(
                e.starts_with(&format!("connect {addr}: ")) && e.contains("refused"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_agent_that_never_answers_is_unreachable_after_the_fetch_timeout() {
        // Accepts (the kernel completes the handshake) but never reads or
        // answers: a hung (e.g. SIGSTOPped) agent.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let api = ApiClient::new(FETCH_TIMEOUT).unwrap();
        let t = Instant::now();
        let got = api.block_on(fetch(&api, &addr, &queries()));
        let took = t.elapsed();
        assert!(
            took >= FETCH_TIMEOUT && took < FETCH_TIMEOUT + Duration::from_secs(1),
            "took {took:?}"
        );
        match got {
            Fetched::Unreachable(e) => assert_eq!(e, "no answer within 3s"),
            other => panic!("{other:?}"),
        }
        drop(l);
    }

    fn state(now: Instant) -> State {
        State {
            rows: Vec::new(),
            sort: SortKey::Rate,
            updated: None,
            unreachable: None,
            query_error: None,
            heard: now,
        }
    }

    #[test]
    fn the_problem_line_says_the_agent_is_unreachable_and_recovers() {
        let (o, i, now) = (opts(), Duration::from_secs(1), Instant::now());
        let mut st = state(now);
        assert_eq!(st.problem(&o, i, now), None);
        st.take(Fetched::Unreachable("connect: Connection refused".into()), now);
        assert_eq!(
            st.problem(&o, i, now).unwrap(),
            "agent at http://127.0.0.1:9 unreachable: connect: Connection refused, retrying every 1s (no data yet)"
        );
        st.take(
            Fetched::Answers {
                answers: Vec::new(),
                error: None,
            },
            now,
        );
        assert_eq!(st.problem(&o, i, now), None, "an answer clears it");
        assert!(st.updated.is_some());
        st.take(
            Fetched::Answers {
                answers: Vec::new(),
                error: Some("up: bad".into()),
            },
            now,
        );
        assert_eq!(st.problem(&o, i, now).unwrap(), "a query failed: up: bad");
    }

    #[test]
    fn a_fetch_thread_silent_for_too_long_shows_as_unreachable() {
        let (o, i, now) = (opts(), Duration::from_secs(1), Instant::now());
        let st = state(now);
        let quiet = now + i + FETCH_TIMEOUT;
        assert_eq!(st.problem(&o, i, quiet), None, "within a refresh's bound");
        let late = now + i + FETCH_TIMEOUT + Duration::from_secs(2);
        let p = st.problem(&o, i, late).unwrap();
        assert!(
            p.starts_with("agent at http://127.0.0.1:9 unreachable: no refresh for 6s, retrying every 1s"),
            "{p}"
        );
    }
}
