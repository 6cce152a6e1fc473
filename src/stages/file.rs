//! `file`: replays Events from a file, and with `follow: true` tails it.
//!
//! Accepted shapes, detected from the content: a JSON `EventList` (`kubectl get events -o
//! json`), a JSON array of Events, or JSON lines (one Event, EventList or array per line), of
//! either API version. A file whose first line is a lone `{` or `[` is read as one JSON
//! document (it must fit in memory); anything else is read line by line, so JSON lines files
//! of any size stream in bounded memory. A record that cannot be decoded is logged with its
//! line number, counted (`eventflow_events_discarded_total{reason="malformed"}`), and skipped.
//!
//! `follow: true` reads JSON lines as they are appended (polling every `poll_interval`), keeps
//! a partial last line until its newline arrives, starts again from the top when the file is
//! truncated or replaced (log rotation), and stops at shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use metrics::Counter;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};

use crate::component::Fanout;
use crate::component::MAX_BATCH;
use crate::component::{
    BuildContext, BuildError, Shutdown, Source, SourceContext, Stage, StageConfig, StageError,
    StageKind, StageType,
};
use crate::event::Batch;
use crate::event::{DecodeError, Event, EventData, Finalizers, WireEvent};
use crate::types::{Dur, Invalid};

/// Replays Events from a file (JSON EventList, JSON array, or JSON lines).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to read. A relative path is relative to the pipeline file's directory; `~/`
    /// is the home directory.
    #[serde(deserialize_with = "crate::types::home_path")]
    pub path: PathBuf,
    /// Keep reading lines appended to the file (JSON lines) until shutdown.
    #[serde(default)]
    pub follow: bool,
    /// How often to look for new data when following.
    #[serde(default = "default_poll")]
    pub poll_interval: Dur,
    /// The cluster name given to every event read from this file.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The longest record (a JSON line), in bytes. A longer one is skipped as it is read —
    /// never held whole — logged with its line and counted as malformed. The API server
    /// refuses objects over about 1.5 MB, so a real Event is far below the default (4 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
}

fn default_max_record_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_poll() -> Dur {
    Dur::millis(200)
}

fn default_cluster() -> String {
    "default".to_string()
}

impl StageConfig for FileConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::{Bound, size};
        vec![Bound::new(
            "the record being read",
            format!("max_record_bytes {} x 2", size(self.max_record_bytes)),
            self.max_record_bytes.saturating_mul(2),
        )]
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        crate::component::at_least_one(&mut out, "max_record_bytes", self.max_record_bytes);
        if !self.follow && !self.path.exists() {
            out.push(Invalid::new(
                "path",
                format!(
                    "{} does not exist (with `follow: true` it would be read once it appears)",
                    self.path.display()
                ),
            ));
        }
        out
    }

    fn warnings(&self) -> Vec<Invalid> {
        if !self.follow || self.path.exists() {
            return Vec::new();
        }
        vec![Invalid::new(
            "path",
            format!(
                "{} does not exist yet; it is followed from when it appears",
                self.path.display()
            ),
        )]
    }

    fn build<'a>(&'a self, _: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            Ok(Stage::Source(
                Box::new(FileSource { cfg: self.clone() }) as Box<dyn Source>
            ))
        })
    }
}

struct FileSource {
    cfg: FileConfig,
}

impl Source for FileSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(run(self.cfg, cx))
    }
}

/// Turns bytes into events, counting what it cannot decode.
pub struct Decoder {
    cluster: Arc<str>,
    origin: String,
    read: Counter,
    malformed: Counter,
    /// Events decoded and events skipped so far (a skipped record counts the events it held).
    tally: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
    /// The longest record kept; past it the rest of the line is skipped as it is read.
    max_record: usize,
    /// Bytes of an over-long line skipped so far (0: not skipping).
    oversized: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct WireList<'a> {
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

impl Decoder {
    pub fn new(cluster: &str, origin: String, read: Counter, malformed: Counter) -> Decoder {
        Decoder {
            cluster: Arc::from(cluster),
            origin,
            read,
            malformed,
            tally: std::sync::atomic::AtomicU64::new(0),
            skipped: std::sync::atomic::AtomicU64::new(0),
            max_record: usize::MAX,
            oversized: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records longer than `bytes` are skipped as they are read.
    #[must_use]
    pub fn with_max_record(mut self, bytes: u64) -> Decoder {
        self.max_record = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
        self
    }

    /// Skips `n` more bytes of an over-long line.
    fn skip_bytes(&self, n: usize) {
        self.oversized
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether an over-long line is being skipped.
    fn skipping(&self) -> bool {
        self.oversized.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The over-long line ended at line `lineno`: reports it.
    fn end_skip(&self, lineno: usize) {
        let n = self.oversized.swap(0, std::sync::atomic::Ordering::Relaxed);
        self.bad(
            lineno,
            &format!(
                "the record is {n} bytes, more than max_record_bytes ({}): skipped without being read whole",
                self.max_record
            ),
        );
    }

    fn bad(&self, line: usize, err: &dyn std::fmt::Display) {
        self.bad_many(line, err, 1);
    }

    /// A skipped record that held `events` events: logged with that count and counted as
    /// that many, never as one.
    fn bad_many(&self, line: usize, err: &dyn std::fmt::Display, events: u64) {
        self.malformed.increment(events);
        self.skipped
            .fetch_add(events, std::sync::atomic::Ordering::Relaxed);
        if events > 1 {
            tracing::warn!(file = %self.origin, line, events, error = %err, "skipping a record that held several events");
        } else {
            tracing::warn!(file = %self.origin, line, error = %err, "skipping a record that is not a valid Event");
        }
    }

    fn push(data: EventData, out: &mut Batch) {
        out.push(Event::new(data, Finalizers::None));
    }

    /// Counts events read, once per batch.
    fn flush_count(&self, n: usize) {
        self.read.increment(n as u64);
        self.tally
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Events decoded so far, and events skipped.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.tally.load(std::sync::atomic::Ordering::Relaxed),
            self.skipped.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Decodes the items of a JSON array one by one, as far as they go: a bad byte or broken
    /// JSON part-way costs what follows it, not the items before it. What is left is skipped
    /// as one record, counted as the events it appears to hold.
    fn decode_array(&self, text: &str, line: usize, out: &mut Batch, broken_after: Option<&[u8]>) {
        let bytes = text.as_bytes();
        let mut at = text.find('[').map_or(text.len(), |i| i + 1);
        let skip_ws = |mut i: usize| {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        };
        let failure: Option<String> = loop {
            at = skip_ws(at);
            match bytes.get(at) {
                Some(b']') if broken_after.is_none() => break None,
                None => break Some("the record ends part-way".to_string()),
                _ => {}
            }
            let mut items =
                serde_json::Deserializer::from_str(&text[at..]).into_iter::<&RawValue>();
            match items.next() {
                Some(Ok(item)) => {
                    self.decode_item(item.get(), line, out);
                    at += items.byte_offset();
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the record ends part-way".to_string()),
            }
            at = skip_ws(at);
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b']') if broken_after.is_none() => break None,
                Some(_) => break Some(format!("expected `,` or `]` at byte {at}")),
                None => break Some("the record ends part-way".to_string()),
            }
        };
        if let Some(why) = failure {
            let mut rest = bytes[at.min(bytes.len())..].to_vec();
            rest.extend_from_slice(broken_after.unwrap_or_default());
            let events = events_in(&rest).max(1);
            let why = match broken_after {
                Some(_) => format!("{why} (invalid UTF-8 after byte {})", text.len()),
                None => why,
            };
            self.bad_many(
                line,
                &format!("from byte {at} of the record: {why}"),
                events,
            );
        }
    }

    /// Decodes one JSON object: an Event, or an EventList / array of Events.
    fn decode_value(&self, text: &str, line: usize, out: &mut Batch) {
        let text = text.trim();
        if text.starts_with('[') {
            self.decode_array(text, line, out, None);
            return;
        }
        match serde_json::from_str::<WireEvent>(text) {
            Ok(w) if w.metadata.uid.is_some() => {
                match w.normalize(&self.cluster, Some(text.into())) {
                    Ok(d) => Self::push(d, out),
                    Err(e) => self.bad(line, &e),
                }
            }
            Ok(_) => match serde_json::from_str::<WireList>(text) {
                Ok(WireList { items: Some(items) }) => items
                    .iter()
                    .for_each(|i| self.decode_item(i.get(), line, out)),
                _ => self.bad(line, &DecodeError::NoUid),
            },
            Err(e) => self.bad_many(line, &e, events_in(text.as_bytes()).max(1)),
        }
    }

    fn decode_item(&self, text: &str, line: usize, out: &mut Batch) {
        match crate::event::decode(text, &self.cluster) {
            Ok(d) => Self::push(d, out),
            Err(e) => self.bad(line, &e),
        }
    }

    /// Decodes a whole JSON document (EventList, array, or one Event). Items that fail are
    /// reported with the line where they start.
    pub fn decode_document(
        &self,
        text: &str,
        out: &mut Vec<Batch>,
    ) -> Result<(), serde_json::Error> {
        let doc: &RawValue = serde_json::from_str(text)?;
        let body = doc.get().trim_start();
        let items: Vec<&RawValue> = if body.starts_with('[') {
            serde_json::from_str(body)?
        } else {
            match serde_json::from_str::<WireList>(body)? {
                WireList { items: Some(items) } => items,
                WireList { items: None } => vec![doc],
            }
        };
        let base = text.as_ptr() as usize;
        let mut batch = Vec::with_capacity(items.len().min(MAX_BATCH));
        for item in items {
            let offset = (item.get().as_ptr() as usize)
                .saturating_sub(base)
                .min(text.len());
            let line = || memchr::memchr_iter(b'\n', &text.as_bytes()[..offset]).count() + 1;
            match crate::event::decode(item.get(), &self.cluster) {
                Ok(d) => Self::push(d, &mut batch),
                Err(e) => self.bad(line(), &e),
            }
            if batch.len() >= MAX_BATCH {
                out.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            out.push(batch);
        }
        for b in out.iter() {
            self.flush_count(b.len());
        }
        Ok(())
    }

    /// Decodes one line of a JSON lines stream; blank lines are skipped.
    pub fn decode_line(&self, line: &[u8], lineno: usize, out: &mut Batch) {
        if self.skipping() {
            self.skip_bytes(line.len());
            self.end_skip(lineno);
            return;
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        if line.len() > self.max_record {
            self.skip_bytes(line.len());
            self.end_skip(lineno);
            return;
        }
        match std::str::from_utf8(line) {
            Ok(text) => self.decode_value(text, lineno, out),
            // An array (`jq -c`'s output of a list) keeps the items before the bad byte; any
            // other record is skipped whole, counted as the events it held.
            Err(e) => {
                let (good, bad) = line.split_at(e.valid_up_to());
                let prefix = std::str::from_utf8(good).unwrap_or_default();
                if prefix.trim_start().starts_with('[') {
                    self.decode_array(prefix, lineno, out, Some(bad));
                } else {
                    self.bad_many(lineno, &e, events_in(line).max(1));
                }
            }
        }
    }
}

/// About how many Events a stretch of JSON text holds, for counting a skipped record: each
/// Event names the object it is about (`involvedObject`, or `regarding` in events.k8s.io/v1).
fn events_in(bytes: &[u8]) -> u64 {
    let count = |needle: &[u8]| memchr::memmem::find_iter(bytes, needle).count();
    (count(b"\"involvedObject\"") + count(b"\"regarding\"")) as u64
}

/// Reads JSON lines from `reader` until end of input (or shutdown), sending batches.
/// Returns the number of the next line. A partial last line (no newline yet) is left in
/// `partial` for the caller to complete when following. Complete lines are decoded straight
/// from the reader's buffer, without copying.
pub async fn read_lines<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    decoder: &Decoder,
    out: &mut Fanout,
    mut lineno: usize,
    partial: &mut Vec<u8>,
    shutdown: &Shutdown,
) -> std::io::Result<usize> {
    let mut batch: Batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if shutdown.is_requested() {
            break;
        }
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            break;
        }
        let mut used = 0;
        if !partial.is_empty() || decoder.skipping() {
            // Finish the line started in an earlier read (or skip the rest of an over-long one).
            if let Some(i) = memchr::memchr(b'\n', buf) {
                used = i + 1;
                lineno += 1;
                if decoder.skipping() {
                    decoder.skip_bytes(i);
                    decoder.end_skip(lineno);
                } else {
                    partial.extend_from_slice(&buf[..=i]);
                    decoder.decode_line(partial, lineno, &mut batch);
                }
                partial.clear();
            } else {
                let n = buf.len();
                if decoder.skipping() {
                    decoder.skip_bytes(n);
                } else if partial.len() + n > decoder.max_record {
                    // Too long to keep: from here on its bytes are counted, not held.
                    decoder.skip_bytes(partial.len() + n);
                    *partial = Vec::new();
                } else {
                    partial.extend_from_slice(buf);
                }
                reader.consume(n);
                continue;
            }
        }
        while batch.len() < MAX_BATCH {
            if let Some(i) = memchr::memchr(b'\n', &buf[used..]) {
                lineno += 1;
                decoder.decode_line(&buf[used..used + i], lineno, &mut batch);
                used += i + 1;
            } else {
                let rest = &buf[used..];
                if rest.len() > decoder.max_record {
                    decoder.skip_bytes(rest.len());
                } else {
                    partial.extend_from_slice(rest);
                }
                used = buf.len();
                break;
            }
        }
        reader.consume(used);
        if batch.len() >= MAX_BATCH {
            decoder.flush_count(batch.len());
            out.send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)))
                .await;
        }
    }
    decoder.flush_count(batch.len());
    out.send(batch).await;
    Ok(lineno)
}

fn io_err(path: &std::path::Path, e: std::io::Error) -> StageError {
    StageError::with_source(format!("cannot read {}", path.display()), e)
}

async fn run(cfg: FileConfig, mut cx: SourceContext) -> Result<(), StageError> {
    let decoder = Decoder::new(
        &cfg.cluster,
        cfg.path.display().to_string(),
        crate::metrics::received(&cx.metrics.id, cx.metrics.type_name),
        cx.metrics.discarded("malformed"),
    )
    .with_max_record(cfg.max_record_bytes);
    let path = cfg.path.clone();
    if !cfg.follow {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(&path, e))?;
        let mut reader = BufReader::with_capacity(1024 * 1024, file);
        if is_document(&mut reader)
            .await
            .map_err(|e| io_err(&path, e))?
        {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| io_err(&path, e))?;
            // One document is one value: a bad byte anywhere makes the whole file unreadable,
            // so the run fails (exit 1) naming where, and nothing of it is sent.
            let text =
                document_text(&bytes).map_err(|e| StageError::with_source(path.display(), e))?;
            let mut batches = Vec::new();
            decoder.decode_document(text, &mut batches).map_err(|e| {
                let at = format!(
                    "{}:{}:{} (byte {}): invalid JSON",
                    path.display(),
                    e.line(),
                    e.column(),
                    byte_offset(text, &e)
                );
                StageError::with_source(at, e)
            })?;
            drop(bytes);
            for b in batches {
                if cx.shutdown.is_requested() {
                    break;
                }
                cx.out.send(b).await;
            }
        } else {
            let mut partial = Vec::new();
            let n = read_lines(
                &mut reader,
                &decoder,
                &mut cx.out,
                0,
                &mut partial,
                &cx.shutdown,
            )
            .await
            .map_err(|e| io_err(&path, e))?;
            let mut last = Vec::new();
            decoder.decode_line(&partial, n + 1, &mut last);
            decoder.flush_count(last.len());
            cx.out.send(last).await;
        }
        tracing::info!(file = %path.display(), "reached the end of the file");
        // A file of which nothing could be read did not do its job: say so with the run's
        // exit status, not only with a counter.
        if let (0, skipped @ 1..) = decoder.totals() {
            return Err(StageError::new(format!(
                "{}: none of its events could be read ({skipped} skipped as not valid; see the warnings above)",
                path.display()
            )));
        }
        return Ok(());
    }
    follow(cfg, decoder, cx).await
}

/// The UTF-8 byte order mark some editors write at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Skips a byte order mark at the start of the reader.
async fn skip_bom<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    if reader.fill_buf().await?.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    Ok(())
}

/// True if the content is one pretty-printed JSON document (first line is `{` or `[`).
/// A byte order mark is skipped first.
async fn is_document<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<bool> {
    skip_bom(reader).await?;
    let buf = reader.fill_buf().await?;
    let first_line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let t = first_line.trim_ascii();
    Ok(t == b"{" || t == b"[")
}

/// A document's first byte that is not UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("invalid UTF-8 at byte {at} (line {line})")]
struct NotUtf8 {
    at: usize,
    line: usize,
    #[source]
    source: std::str::Utf8Error,
}

/// A whole document as text, or where its first byte that is not UTF-8 is.
fn document_text(bytes: &[u8]) -> Result<&str, NotUtf8> {
    std::str::from_utf8(bytes).map_err(|source| {
        let at = source.valid_up_to();
        let line = memchr::memchr_iter(b'\n', &bytes[..at]).count() + 1;
        NotUtf8 { at, line, source }
    })
}

/// The byte offset of a serde_json error: a 1-based line and column. (For a control character
/// inside a string serde_json reports the column before it; that one case is adjusted.)
fn byte_offset(text: &str, e: &serde_json::Error) -> usize {
    let (line, mut column) = (e.line(), e.column());
    if e.to_string().starts_with("control character") {
        column += 1;
    }
    let start = if line <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', text.as_bytes())
            .nth(line - 2)
            .map_or(text.len(), |i| i + 1)
    };
    (start + column.saturating_sub(1)).min(text.len())
}

async fn follow(
    cfg: FileConfig,
    decoder: Decoder,
    mut cx: SourceContext,
) -> Result<(), StageError> {
    let path = cfg.path.clone();
    let mut announced = false;
    'reopen: loop {
        let file = loop {
            match tokio::fs::File::open(&path).await {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tokio::select! {
                        () = cx.shutdown.requested() => return Ok(()),
                        () = tokio::time::sleep(cfg.poll_interval.0) => {}
                    }
                }
                Err(e) => return Err(io_err(&path, e)),
            }
        };
        let identity = file_identity(&file).await;
        let mut reader = BufReader::with_capacity(1024 * 1024, file);
        skip_bom(&mut reader).await.map_err(|e| io_err(&path, e))?;
        let mut lineno = 0usize;
        let mut partial = Vec::new();
        let mut pos: u64 = 0;
        loop {
            lineno = read_lines(
                &mut reader,
                &decoder,
                &mut cx.out,
                lineno,
                &mut partial,
                &cx.shutdown,
            )
            .await
            .map_err(|e| io_err(&path, e))?;
            pos = reader.stream_position().await.unwrap_or(pos);
            if !announced {
                announced = true;
                tracing::info!(file = %path.display(), lines = lineno, "reached the end of the file; following");
            }
            tokio::select! {
                () = cx.shutdown.requested() => return Ok(()),
                () = tokio::time::sleep(cfg.poll_interval.0) => {}
            }
            // Truncated or replaced: start again from the top of the (new) file.
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.len() < pos || !same_file(&meta, identity) => {
                    tracing::info!(file = %path.display(), "file was truncated or replaced; reading it from the start");
                    continue 'reopen;
                }
                Ok(_) => {}
                Err(_) => continue 'reopen,
            }
        }
    }
}

#[cfg(unix)]
async fn file_identity(f: &tokio::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().await.ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(unix)]
fn same_file(meta: &std::fs::Metadata, id: Option<(u64, u64)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    id.is_none_or(|id| id == (meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
async fn file_identity(_: &tokio::fs::File) -> Option<(u64, u64)> {
    None
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: Option<(u64, u64)>) -> bool {
    true
}

pub const TYPE: StageType = StageType {
    name: "file",
    kind: StageKind::Source,
    summary: "replays Events from a JSON EventList, JSON array or JSON lines file; follow: true tails it",
    parse: crate::component::parse_config::<FileConfig>,
    schema: crate::component::schema_of::<FileConfig>,
    describe: crate::component::no_metrics,
};
