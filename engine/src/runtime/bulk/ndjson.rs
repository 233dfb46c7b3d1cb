//! NDJSON read off an answer as it arrives, one line at a time: what is held is the line being
//! read (at most `maxLine` bytes, a longer one read past and reported by its length) and one
//! chunk of the body. Each chunk must come within the idle time and before the deadline; a
//! body that ends short of its `Content-Length`, or breaks off, is cut.

use std::time::Duration;

use tokio::time::Instant;

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
}

impl ReadError {
    /// True when reading the file again may succeed.
    pub fn transient(&self) -> bool {
        !matches!(self, ReadError::Deadline)
    }
}

/// The lines of an answer, read as they come.
pub struct Lines {
    resp: reqwest::Response,
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
    received: u64,
    ended: bool,
}

impl Lines {
    pub fn new(
        resp: reqwest::Response,
        max_line: usize,
        idle: Duration,
        deadline: Instant,
    ) -> Lines {
        Lines {
            announced: resp.content_length(),
            resp,
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

    /// Reads one more chunk into the buffer, or marks the end.
    async fn fill(&mut self) -> Result<(), ReadError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Deadline);
        }
        let wait = self.idle.min(left);
        let chunk = match tokio::time::timeout(wait, self.resp.chunk()).await {
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
                self.ended = true;
            }
            Some(c) => {
                self.received += c.len() as u64;
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                self.buf.extend_from_slice(&c);
            }
        }
        Ok(())
    }
}
