//! `ngxprobe top`: a live terminal view of a running agent, one row per
//! nginx instance and listener, refreshed every interval.
//!
//! A client of the agent's PromQL HTTP API only (the same client as
//! `ngxprobe query --addr` and `diagnose`): a fetch thread asks the queries
//! of [`rows::queries`] once per interval and hands the answers to the
//! screen loop, which stays responsive to keys while a refresh is under way.
//! Everything but the drawing is in [`rows`] (pure, unit-tested).
pub mod rows;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::compat::duration::parse_ms;
use crate::query::cli::{VectorRow, instant_vector};
use rows::{Field, Row, SortKey};

pub struct Options {
    /// The agent, e.g. `http://127.0.0.1:9113`.
    pub url: String,
    /// How often the screen is refreshed (a Prometheus duration).
    pub interval: String,
    /// Rates and increases are taken over this window (a Prometheus duration).
    pub window: String,
}

/// What one refresh brought: the answers, or why the agent could not be asked.
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
    let result = screen_loop(&mut terminal, &rx, opts);
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
/// refresh; stops when the screen is gone.
fn spawn_fetcher(addr: String, queries: Vec<(Field, String)>, interval: Duration) -> Result<Receiver<Fetched>, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                let mut answers = Vec::new();
                let mut errors = Vec::new();
                for (f, q) in &queries {
                    match instant_vector(&addr, q) {
                        Ok(v) => answers.push((*f, v)),
                        Err(e) => errors.push(e),
                    }
                }
                let fetched = if answers.is_empty() {
                    Fetched::Unreachable(errors.into_iter().next().unwrap_or_default())
                } else {
                    Fetched::Answers {
                        answers,
                        error: errors.into_iter().next(),
                    }
                };
                if tx.send(fetched).is_err() {
                    return;
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .map_err(|e| format!("cannot start the fetch thread: {e}"))?;
    Ok(rx)
}

/// What the screen shows between refreshes.
struct State {
    rows: Vec<Row>,
    sort: SortKey,
    /// Wall-clock time of the last answer.
    updated: Option<SystemTime>,
    /// Agent unreachable or a query failed (shown above the table).
    problem: Option<String>,
}

fn screen_loop(terminal: &mut DefaultTerminal, rx: &Receiver<Fetched>, opts: &Options) -> Result<(), String> {
    let mut st = State {
        rows: Vec::new(),
        sort: SortKey::Rate,
        updated: None,
        problem: None,
    };
    loop {
        terminal
            .draw(|f| draw(f, &st, opts))
            .map_err(|e| format!("cannot draw: {e}"))?;
        // Keys first (responsive), then at most a short wait for a refresh.
        if event::poll(Duration::from_millis(50)).map_err(|e| e.to_string())?
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
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Fetched::Answers { answers, error }) => {
                st.rows = rows::build(&answers);
                rows::sort(&mut st.rows, st.sort);
                st.updated = Some(SystemTime::now());
                st.problem = error.map(|e| format!("a query failed: {e}"));
            }
            Ok(Fetched::Unreachable(e)) => {
                st.problem = Some(format!(
                    "cannot reach the agent at {}: {e} (retrying every {})",
                    opts.url, opts.interval
                ));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("the fetch thread stopped".into()),
        }
    }
}

/// `HH:MM:SS` UTC of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn draw(f: &mut Frame, st: &State, opts: &Options) {
    let [title, problem, table, help] = Layout::vertical([
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
    if let Some(p) = &st.problem {
        f.render_widget(
            Paragraph::new(p.as_str()).style(Style::new().add_modifier(Modifier::REVERSED)),
            problem,
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
