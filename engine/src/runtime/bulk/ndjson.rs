//! NDJSON read off an answer as it arrives, one line at a time: what is held is the line being
//! read (at most `maxLine` bytes, a longer one read past and reported by its length) and one
//! chunk of the body. Each chunk must come within the idle time and before the deadline; a
//! body that ends short of its `Content-Length`, or breaks off, is cut.
//!
//! A body sent gzip-compressed (`Content-Encoding: gzip`) is inflated as it comes, by
//! `flate2`'s push decoder (already used for guide packages): each step inflates at most its
//! 32 KiB buffer, so a gzip bomb is never held whole, and `maxLine` and `maxFileSize` count
//! the inflated bytes.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::upstream::Opened;

/// One line of an NDJSON file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// The line's bytes, without its line break.
    Line(Vec<u8>),
    /// A line longer than the cap, not kept: its length in bytes.
    TooLong(usize),
}

/// Why a file could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No bytes for the idle time (the source's `timeout`).
    #[error("no bytes for {}", crate::runtime::outbound::humanize(*.0))]
    Idle(Duration),
    /// The export's deadline passed while the file was read.
    #[error("the export's deadline passed while it was read")]
    Deadline,
    /// The body broke off, or ended short of its `Content-Length`.
    #[error("cut off: {0}")]
    Cut(String),
    /// The file holds more bytes (inflated, when compressed) than `maxFileSize`.
    #[error("larger than {0} bytes (`bulkExport.maxFileSize`), counted inflated")]
    TooLarge(u64),
    /// A compressed body that is not valid gzip.
    #[error("not valid gzip: {0}")]
    Gzip(String),
}

impl ReadError {
    /// True when reading the file again may succeed.
    pub fn transient(&self) -> bool {
        !matches!(
            self,
            ReadError::Deadline | ReadError::TooLarge(_) | ReadError::Gzip(_)
        )
    }
}

/// The lines of an answer, read as they come.
pub struct Lines {
    /// The answer, with the source's concurrency permit it holds while it streams.
    opened: Opened,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// How far `buf` (from `start`) is known to hold no line break.
    scanned: usize,
    /// Bytes of an over-long line already read past.
    skipping: Option<usize>,
    max_line: usize,
    idle: Duration,
    deadline: Instant,
    announced: Option<u64>,
    /// Bytes received (compressed, when the body is).
    received: u64,
    /// Bytes of the file (inflated, when the body is compressed), and the most it may have.
    size: u64,
    max_size: u64,
    /// The inflater of a gzip body, and the compressed bytes it has not taken yet.
    gzip: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    compressed: bytes::Bytes,
    ended: bool,
}

impl Lines {
    /// The lines of the answer, inflated when `gzip`; at most `max_size` bytes (inflated).
    pub fn new(
        opened: Opened,
        (max_line, max_size): (usize, u64),
        gzip: bool,
        idle: Duration,
        deadline: Instant,
    ) -> Lines {
        Lines {
            announced: opened.response.content_length(),
            size: 0,
            max_size,
            gzip: gzip.then(|| flate2::write::MultiGzDecoder::new(Vec::new())),
            compressed: bytes::Bytes::new(),
            opened,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skipping: None,
            max_line,
            idle,
            deadline,
            received: 0,
            ended: false,
        }
    }

    /// The next line (blank lines included, as empty ones), or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Text>, ReadError> {
        loop {
            let unread = &self.buf[self.start..];
            if let Some(i) = unread[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + i;
                let mut line = &unread[..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let text = match self.skipping.take() {
                    Some(skipped) => Text::TooLong(skipped + line.len()),
                    None if line.len() > self.max_line => Text::TooLong(line.len()),
                    None => Text::Line(line.to_vec()),
                };
                self.start += end + 1;
                self.scanned = 0;
                return Ok(Some(text));
            }
            self.scanned = unread.len();
            if unread.len() > self.max_line {
                // Read past: only its length is kept.
                *self.skipping.get_or_insert(0) += unread.len();
                self.buf.clear();
                self.start = 0;
                self.scanned = 0;
            }
            if self.ended {
                let rest = &self.buf[self.start..];
                let text = match self.skipping.take() {
                    Some(skipped) => Some(Text::TooLong(skipped + rest.len())),
                    None if rest.is_empty() => None,
                    None => Some(Text::Line(rest.to_vec())),
                };
                self.buf.clear();
                self.start = 0;
                self.scanned = 0;
                return Ok(text);
            }
            self.fill().await?;
        }
    }

    /// Adds bytes of the file to the buffer, counted against `maxFileSize`.
    fn take(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            return Err(ReadError::TooLarge(self.max_size));
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// One step of the inflater over the compressed bytes it has not taken: at most its
    /// buffer's worth (32 KiB) inflated into the lines' buffer.
    fn inflate(&mut self) -> Result<(), ReadError> {
        let Some(gz) = self.gzip.as_mut() else {
            return Ok(());
        };
        let bad = |e: std::io::Error| ReadError::Gzip(e.to_string());
        let used = gz.write(&self.compressed).map_err(bad)?;
        let out = std::mem::take(gz.get_mut());
        if used == 0 && out.is_empty() {
            return Err(ReadError::Gzip(
                "bytes after the end of the gzip data".into(),
            ));
        }
        self.compressed = self.compressed.slice(used..);
        self.take(&out)
    }

    /// Reads one more chunk into the buffer (inflates one more step of a compressed one), or
    /// marks the end.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if !self.compressed.is_empty() {
            return self.inflate();
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Deadline);
        }
        let wait = self.idle.min(left);
        let chunk = match tokio::time::timeout(wait, self.opened.response.chunk()).await {
            Err(_) if wait < self.idle => return Err(ReadError::Deadline),
            Err(_) => return Err(ReadError::Idle(self.idle)),
            Ok(Err(e)) => {
                return Err(ReadError::Cut(
                    crate::runtime::outbound::OutboundError::of(&e, self.idle).to_string(),
                ));
            }
            Ok(Ok(c)) => c,
        };
        match chunk {
            None => {
                if let Some(n) = self.announced
                    && n != self.received
                {
                    return Err(ReadError::Cut(format!(
                        "{} bytes of the {n} its Content-Length announced",
                        self.received
                    )));
                }
                if let Some(gz) = self.gzip.as_mut() {
                    // The rest of the inflated data, and the gzip trailer checked: a body that
                    // ends inside the compressed data is not whole.
                    gz.try_finish()
                        .map_err(|e| ReadError::Gzip(e.to_string()))?;
                    let out = std::mem::take(gz.get_mut());
                    self.take(&out)?;
                }
                self.ended = true;
            }
            Some(c) => {
                self.received += c.len() as u64;
                if self.gzip.is_some() {
                    self.compressed = c;
                    return self.inflate();
                }
                self.take(&c)?;
            }
        }
        Ok(())
    }
}
