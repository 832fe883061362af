//! Benchmark tools (issue 5): the parse-only floor, and a fixed-rate feeder for the
//! live-latency benchmark. Used by `antispider parse` and `antispider feed`.
//!
//! - [`parse_floor`] reads a log with `workers` threads through the engine's file source (the
//!   file read once, each thread keeping every `workers`-th line), and parses every kept line
//!   with [`parse_line`]; optionally runs [`dataprocess::process`] too. No dataflow: this is the
//!   floor the full pipeline is compared with.
//! - [`feed`] appends the lines of a log to another file at a fixed rate, in batches every
//!   millisecond, optionally rewriting each line's event time to the wall clock ([`retime`]).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::dataprocess::{self, CookieNames, DataRules, Masker, Outcome};
use crate::format::time::{format_iso8601, format_time_local, parse_iso8601, parse_time_local};
use crate::format::{iso8601_offset, parse_line, time_local_offset, LogFormat, ParseLimits};

// ---------------------------------------------------------------------------------------------
// Parse-only floor.

/// What [`parse_floor`] also runs after parsing.
pub struct ProcessStage {
    pub rules: DataRules,
    pub masker: Masker,
    pub cookies: CookieNames,
}

/// Result of [`parse_floor`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorSummary {
    pub file: String,
    pub format: LogFormat,
    pub workers: usize,
    /// `parse` (read + parse) or `parse+dataprocess`.
    pub stage: &'static str,
    pub lines: u64,
    pub parsed: u64,
    pub errors: u64,
    /// Only with the dataprocess stage: records dropped by a filter rule / processed.
    pub filtered: u64,
    pub processed: u64,
    pub elapsed_secs: f64,
    pub lines_per_sec: f64,
}

/// Reads and parses `path` with `workers` threads (the file read once, each thread keeping its
/// `line_no % workers` share, as the engine's workers do), optionally running `process` on every
/// parsed record.
pub fn parse_floor(
    path: &Path,
    format: LogFormat,
    workers: usize,
    limits: ParseLimits,
    process: Option<&ProcessStage>,
) -> anyhow::Result<FloorSummary> {
    let workers = workers.max(1);
    // Open the file first, so a missing file is an error before any timing.
    let log = crate::source::SharedLog::open(path, false, workers)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let start = Instant::now();
    let parts: Vec<io::Result<[u64; 5]>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|index| {
                let source = crate::source::FileSource::reading(
                    log.clone(),
                    index,
                    format,
                    (index, workers),
                );
                s.spawn(move || floor_worker(source, &limits, process))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parse worker panicked"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut sum = FloorSummary {
        file: path.display().to_string(),
        format,
        workers,
        stage: if process.is_some() {
            "parse+dataprocess"
        } else {
            "parse"
        },
        lines: 0,
        parsed: 0,
        errors: 0,
        filtered: 0,
        processed: 0,
        elapsed_secs: elapsed,
        lines_per_sec: 0.0,
    };
    for p in parts {
        let [lines, parsed, errors, filtered, processed] =
            p.with_context(|| format!("{}: read error", path.display()))?;
        sum.lines += lines;
        sum.parsed += parsed;
        sum.errors += errors;
        sum.filtered += filtered;
        sum.processed += processed;
    }
    sum.lines_per_sec = sum.lines as f64 / elapsed.max(1e-9);
    Ok(sum)
}

/// One worker of [`parse_floor`]: `[lines, parsed, errors, filtered, processed]` of its share.
fn floor_worker(
    mut source: crate::source::FileSource,
    limits: &ParseLimits,
    process: Option<&ProcessStage>,
) -> io::Result<[u64; 5]> {
    use crate::source::{LineSource, Poll};
    let mut lines = Vec::with_capacity(8192);
    let mut c = [0u64; 5];
    loop {
        let status = source.poll(&mut lines, 8192)?;
        for raw in lines.drain(..) {
            c[0] += 1;
            match parse_line(raw.format, &raw.bytes, limits) {
                Ok(rec) => {
                    c[1] += 1;
                    if let Some(p) = process {
                        match dataprocess::process(&p.rules, &p.masker, &p.cookies, rec) {
                            Outcome::Filtered => c[3] += 1,
                            Outcome::Processed(d) => {
                                c[4] += 1;
                                std::hint::black_box(d);
                            }
                        }
                    } else {
                        std::hint::black_box(rec);
                    }
                }
                Err(_) => c[2] += 1,
            }
        }
        if status == Poll::Eof {
            return Ok(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event-time rewriting.

/// Rewrites the event time(s) of `line` (no trailing newline) to `ms`, keeping each field's
/// UTC offset and layout, into `out` (cleared first). Only time fields that currently parse
/// are rewritten, so lines with a bad time stay bad. Returns false (and copies the line as is)
/// when no time field was found.
///
/// - `cs`: field 1 (`$time_local`) and field 9 (`$time_iso8601`) of the `#CS#` fields;
/// - `combined`: the `[$time_local]` field;
/// - `json`: the string values of the `time_iso8601` and `time_local` keys (found textually:
///   the first `"time_iso8601"` / `"time_local"` key followed by `:` and a string).
pub fn retime(format: LogFormat, line: &[u8], ms: i64, out: &mut Vec<u8>) -> bool {
    out.clear();
    // Spans (start, end, is_iso) of the time fields to replace, in order.
    let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(2);
    match format {
        LogFormat::Cs => {
            let mut start = 0;
            let mut field = 0;
            let mut i = 0;
            while field <= 8 {
                let end = find(line, i, b"#CS#").unwrap_or(line.len());
                if field == 0 || field == 8 {
                    spans.push((start, end, field == 8));
                }
                if end == line.len() {
                    break;
                }
                start = end + 4;
                i = start;
                field += 1;
            }
        }
        LogFormat::Combined => {
            if let Some(open) = line
                .windows(3)
                .position(|w| w[0] == b' ' && w[1] == b'[' && w[2].is_ascii_digit())
            {
                let s = open + 2;
                if let Some(len) = line[s..].iter().position(|&c| c == b']') {
                    spans.push((s, s + len, false));
                }
            }
        }
        LogFormat::Json => {
            for (key, iso) in [(&b"\"time_iso8601\""[..], true), (b"\"time_local\"", false)] {
                if let Some(span) = json_string_value(line, key) {
                    spans.push((span.0, span.1, iso));
                }
            }
            spans.sort_unstable();
        }
    }
    let mut pos = 0;
    let mut any = false;
    for (s, e, iso) in spans {
        let Ok(text) = std::str::from_utf8(&line[s..e]) else {
            continue;
        };
        let new = if iso {
            parse_iso8601(text).map(|_| format_iso8601(ms, iso8601_offset(text)))
        } else {
            parse_time_local(text).map(|_| format_time_local(ms, time_local_offset(text)))
        };
        if let Some(new) = new {
            out.extend_from_slice(&line[pos..s]);
            out.extend_from_slice(new.as_bytes());
            pos = e;
            any = true;
        }
    }
    out.extend_from_slice(&line[pos..]);
    any
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The span of the string value (inside the quotes) of the first `key` (with its quotes) that is
/// followed by `:` and a string; the value must contain no `"` or `\`.
fn json_string_value(line: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(k) = find(line, from, key) {
        from = k + 1;
        if k > 0 && line[k - 1] == b'\\' {
            continue; // inside a string
        }
        let mut i = k + key.len();
        let skip_ws = |i: &mut usize| {
            while *i < line.len() && line[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        if line.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        if line.get(i) != Some(&b'"') {
            continue;
        }
        let s = i + 1;
        let len = line[s..].iter().position(|&c| c == b'"' || c == b'\\')?;
        if line[s + len] != b'"' {
            return None;
        }
        return Some((s, s + len));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Fixed-rate feeder.

/// Options of [`feed`].
#[derive(Clone, Debug)]
pub struct FeedOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Lines per second (> 0).
    pub rate: f64,
    /// Stop after this long; the input is read again from the start when it runs out.
    /// `None`: one pass over the input.
    pub seconds: Option<f64>,
    /// Rewrite each line's event time to the wall clock at its write.
    pub retime: Option<LogFormat>,
    /// Truncate the output first (else append).
    pub truncate: bool,
}

/// Result of [`feed`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeedSummary {
    pub lines: u64,
    pub bytes: u64,
    /// Passes over the input begun.
    pub passes: u64,
    /// Lines whose time could not be rewritten (written as they were).
    pub not_retimed: u64,
    pub elapsed_secs: f64,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Largest shortfall against the schedule seen at a batch, in lines (the writer could not
    /// keep up when this is large).
    pub max_behind_lines: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Appends the lines of `opts.input` to `opts.output` at `opts.rate` lines/s: every ~1 ms it
/// writes the lines due by then (rate × elapsed, minus those written) and flushes. Stops at the
/// end of the input (or after `opts.seconds`, looping over the input) or when `stop` is set.
pub fn feed(opts: &FeedOptions, stop: &AtomicBool) -> anyhow::Result<FeedSummary> {
    anyhow::ensure!(
        opts.rate > 0.0 && opts.rate.is_finite(),
        "--rate must be > 0"
    );
    let open_in = || -> anyhow::Result<BufReader<File>> {
        Ok(BufReader::with_capacity(
            1 << 20,
            File::open(&opts.input)
                .with_context(|| format!("{}: cannot open", opts.input.display()))?,
        ))
    };
    let mut input = open_in()?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(!opts.truncate)
        .write(true)
        .truncate(opts.truncate)
        .open(&opts.output)
        .with_context(|| format!("{}: cannot open for writing", opts.output.display()))?;
    let mut s = FeedSummary {
        passes: 1,
        target_rate: opts.rate,
        ..Default::default()
    };
    let mut line = Vec::with_capacity(4096);
    let mut retimed = Vec::with_capacity(4096);
    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut line_in_pass = 0u64;
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    let mut next = start;
    'run: loop {
        let elapsed = start.elapsed().as_secs_f64();
        if stop.load(Ordering::Relaxed) || opts.seconds.is_some_and(|m| elapsed >= m) {
            break;
        }
        let due = (elapsed * opts.rate) as u64;
        s.max_behind_lines = s.max_behind_lines.max(due.saturating_sub(s.lines));
        let ms = now_ms();
        batch.clear();
        while s.lines < due {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                if opts.seconds.is_none() || line_in_pass == 0 {
                    // One pass done (or an empty input).
                    out.write_all(&batch)?;
                    s.bytes += batch.len() as u64;
                    break 'run;
                }
                input = open_in()?;
                s.passes += 1;
                line_in_pass = 0;
                continue;
            }
            line_in_pass += 1;
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            match opts.retime {
                Some(f) => {
                    if !retime(f, &line[..line.len() - 1], ms, &mut retimed) {
                        s.not_retimed += 1;
                    }
                    retimed.push(b'\n');
                    batch.extend_from_slice(&retimed);
                }
                None => batch.extend_from_slice(&line),
            }
            s.lines += 1;
        }
        if !batch.is_empty() {
            out.write_all(&batch)?;
            out.flush()?;
            s.bytes += batch.len() as u64;
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    out.flush()?;
    s.elapsed_secs = start.elapsed().as_secs_f64();
    s.achieved_rate = s.lines as f64 / s.elapsed_secs.max(1e-9);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{generate, GenOptions};

    fn sample(format: LogFormat, lines: u64) -> Vec<u8> {
        let o = GenOptions {
            lines,
            format,
            malformed_per_mille: 20,
            ..GenOptions::default()
        };
        let (mut log, mut truth) = (Vec::new(), Vec::new());
        generate(&o, &mut log, &mut truth).unwrap();
        log
    }

    #[test]
    fn the_floor_reads_every_line_once_whatever_the_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cs.log");
        let log = sample(LogFormat::Cs, 5000);
        std::fs::write(&path, &log).unwrap();
        let lim = ParseLimits::default();
        let lines = log.split(|&c| c == b'\n').filter(|l| !l.is_empty());
        let errors = lines
            .clone()
            .filter(|l| parse_line(LogFormat::Cs, l, &lim).is_err())
            .count() as u64;
        assert!(errors > 0, "the sample has malformed lines");
        for threads in [1, 3] {
            let f = parse_floor(&path, LogFormat::Cs, threads, lim, None).unwrap();
            assert_eq!(
                (f.lines, f.errors, f.parsed),
                (5000, errors, 5000 - errors),
                "{threads} threads"
            );
        }
    }

    #[test]
    fn retime_every_format() {
        let lim = ParseLimits::default();
        let at = parse_iso8601("2030-01-02T03:04:05.678+08:00").unwrap();
        for format in [LogFormat::Cs, LogFormat::Combined, LogFormat::Json] {
            let log = sample(format, 2000);
            let mut out = Vec::new();
            let (mut ok, mut bad) = (0, 0);
            for l in log.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                let before = parse_line(format, l, &lim);
                let changed = retime(format, l, at, &mut out);
                let after = parse_line(format, &out, &lim);
                match (before, after) {
                    (Ok(b), Ok(a)) => {
                        assert!(changed, "{format}");
                        // combined has only $time_local: whole seconds.
                        let want = if format == LogFormat::Combined {
                            at - at % 1000
                        } else {
                            at
                        };
                        assert_eq!(a.time_ms, want, "{format}");
                        assert_eq!(a.remote_addr, b.remote_addr);
                        assert_eq!(a.request_body, b.request_body);
                        assert_eq!(a.http_cookie, b.http_cookie);
                        if format != LogFormat::Combined {
                            assert_eq!(a.time_iso8601, "2030-01-02T03:04:05.678+08:00");
                        }
                        assert_eq!(a.time_local, "02/Jan/2030:03:04:05 +0800");
                        ok += 1;
                    }
                    (Err(b), Err(a)) => {
                        assert_eq!(a.kind, b.kind, "{format}: a bad line stays bad");
                        bad += 1;
                    }
                    (b, a) => panic!("{format}: {b:?} became {a:?}"),
                }
            }
            assert!(ok > 1900 && bad > 10, "{format}: {ok} {bad}");
        }
        // No time field at all: copied as is.
        let mut out = Vec::new();
        assert!(!retime(LogFormat::Json, b"{\"a\":1}", at, &mut out));
        assert_eq!(out, b"{\"a\":1}");
    }

    #[test]
    fn floor_counts_match_with_workers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, sample(LogFormat::Cs, 3001)).unwrap();
        let one = parse_floor(&p, LogFormat::Cs, 1, ParseLimits::default(), None).unwrap();
        let three = parse_floor(&p, LogFormat::Cs, 3, ParseLimits::default(), None).unwrap();
        assert_eq!(one.lines, 3001);
        assert_eq!(
            (one.lines, one.parsed, one.errors),
            (three.lines, three.parsed, three.errors)
        );
        assert!(one.errors > 0 && one.parsed + one.errors == one.lines);
        let stage = ProcessStage {
            rules: DataRules::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
                .unwrap(),
            masker: Masker::new(dataprocess::MaskMode::Hmac, b"t"),
            cookies: CookieNames::default(),
        };
        let pr = parse_floor(&p, LogFormat::Cs, 2, ParseLimits::default(), Some(&stage)).unwrap();
        assert_eq!(pr.filtered + pr.processed, pr.parsed);
        assert!(pr.filtered > 0 && pr.processed > 0);
    }

    #[test]
    fn feed_loops_and_retimes() {
        let dir = tempfile::tempdir().unwrap();
        let (i, o) = (dir.path().join("in.log"), dir.path().join("out.log"));
        std::fs::write(&i, sample(LogFormat::Cs, 100)).unwrap();
        std::fs::write(&o, b"old\n").unwrap();
        let stop = AtomicBool::new(false);
        let mut opts = FeedOptions {
            input: i.clone(),
            output: o.clone(),
            rate: 2000.0,
            seconds: None,
            retime: None,
            truncate: false,
        };
        let s = feed(&opts, &stop).unwrap();
        assert_eq!(s.lines, 100);
        let text = std::fs::read(&o).unwrap();
        assert_eq!(text, [&b"old\n"[..], &std::fs::read(&i).unwrap()].concat());
        // Loops over the input for 0.3 s at 2000 lines/s; the times are now.
        opts.seconds = Some(0.3);
        opts.retime = Some(LogFormat::Cs);
        opts.truncate = true;
        let t0 = now_ms();
        let s = feed(&opts, &stop).unwrap();
        assert!(s.passes >= 5 && s.lines >= 500 && s.lines <= 610, "{s:?}");
        let lim = ParseLimits::default();
        let out = std::fs::read(&o).unwrap();
        let n = out.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(n as u64, s.lines);
        for l in out.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(r) = parse_line(LogFormat::Cs, l, &lim) {
                assert!(r.time_ms >= t0 && r.time_ms <= now_ms(), "{}", r.time_ms);
            }
        }
    }
}
