//! The segment files of a push queue (`queue/{first sequence:020}.seg`): an 8-byte magic,
//! then records appended one group commit at a time, each `length` (u32), `checksum` (u32,
//! CRC-32 of length, sequence and body), `sequence` (u64), all little-endian, and the body
//! (the queued payload's JSON). `scan` reads a segment back at open: its records, a torn tail
//! (a record cut short by `kill -9` or a power loss: never acknowledged) to truncate, and the
//! damaged spans (a record whose checksum or length is wrong with a valid record or a whole
//! record's bytes after it: disk damage of what may have been acknowledged) found by looking
//! for the next valid record byte by byte.

/// The first bytes of every segment (the format's version).
pub(super) const MAGIC: &[u8; 8] = b"FOSPSQ1\n";
/// Length, checksum and sequence before a record's body.
pub(super) const HEADER: usize = 16;
/// The extension of segment files.
pub(super) const EXTENSION: &str = "seg";

/// Appends a record (`seq`, `body`) to `out`.
pub(super) fn encode(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, seq, body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

fn checksum(len: u32, seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// A record found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) seq: u64,
    /// Where its header starts.
    pub(super) offset: u64,
    /// Its body's length.
    pub(super) len: u32,
}

impl Record {
    /// Where the record ends (header and body).
    pub(super) fn end(&self) -> u64 {
        self.offset + HEADER as u64 + u64::from(self.len)
    }
}

/// A span of a segment that holds no valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Damage {
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// What a segment holds.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    pub(super) records: Vec<Record>,
    pub(super) damaged: Vec<Damage>,
    /// Where a torn tail starts (the length to truncate the segment to), if it has one.
    pub(super) torn: Option<u64>,
}

/// The record whose header starts at `at` in `bytes`, if it is whole, its checksum right and
/// its sequence at least `min`.
fn record_at(bytes: &[u8], at: usize, min: u64) -> Option<Record> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let sum = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if len == 0 || seq < min {
        return None;
    }
    let start = at + HEADER;
    let body = bytes.get(start..start.checked_add(len as usize)?)?;
    (checksum(len, seq, body) == sum).then_some(Record {
        seq,
        offset: at as u64,
        len,
    })
}

/// Whether the bad bytes at `at` are a torn tail: a header cut short, a record that claims
/// more bytes than the segment holds, or nothing but zeros (a size extended, its data not on
/// disk). A complete record with a wrong checksum is damage, not a tear: it may have been
/// acknowledged.
fn torn_at(bytes: &[u8], at: usize) -> bool {
    let rest = &bytes[at..];
    if rest.len() < HEADER || rest.iter().all(|b| *b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    HEADER + len > rest.len()
}

/// Reads a segment whose first record's sequence is `first`. `last`: the segment that was
/// being appended to (only it can have a torn tail).
pub(super) fn scan(bytes: &[u8], first: u64, last: bool) -> Scanned {
    let mut out = Scanned::default();
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
        let cut_at_creation = bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes);
        if cut_at_creation && last {
            out.torn = Some(0);
        } else if !bytes.is_empty() {
            out.damaged.push(Damage {
                offset: 0,
                len: bytes.len() as u64,
            });
        }
        return out;
    }
    let mut at = MAGIC.len();
    let mut min = first;
    while at < bytes.len() {
        if let Some(r) = record_at(bytes, at, min) {
            out.records.push(r);
            min = r.seq + 1;
            at = r.end() as usize;
            continue;
        }
        if last && torn_at(bytes, at) {
            out.torn = Some(at as u64);
            return out;
        }
        let next = (at + 1..bytes.len()).find(|&i| record_at(bytes, i, min).is_some());
        let end = next.unwrap_or(bytes.len());
        out.damaged.push(Damage {
            offset: at as u64,
            len: (end - at) as u64,
        });
        at = end;
    }
    out
}

/// A record's body read back, checked against its header.
pub(super) fn body_of(bytes: &[u8], record: &Record) -> Option<Vec<u8>> {
    let r = record_at(bytes, 0, record.seq)?;
    (r.seq == record.seq && r.len == record.len).then(|| bytes[HEADER..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (seq, body) in records {
            encode(&mut out, *seq, body);
        }
        out
    }

    #[test]
    fn records_read_back_in_order() {
        let bytes = segment(&[(7, b"{\"a\":1}"), (8, b"{\"b\":2}")]);
        let s = scan(&bytes, 7, true);
        assert_eq!(s.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8]);
        assert!(s.damaged.is_empty() && s.torn.is_none(), "{s:?}");
        let r = s.records[1];
        let body = body_of(&bytes[r.offset as usize..r.end() as usize], &r);
        assert_eq!(body.as_deref(), Some(&b"{\"b\":2}"[..]));
    }

    #[test]
    fn a_tail_cut_anywhere_is_torn_and_the_records_before_it_kept() {
        let whole = segment(&[(1, b"{\"a\":1}"), (2, b"{\"b\":22}")]);
        let first_end = MAGIC.len() + HEADER + 7;
        for cut in first_end + 1..whole.len() {
            let s = scan(&whole[..cut], 1, true);
            assert_eq!(s.records.len(), 1, "cut at {cut}");
            assert_eq!(s.torn, Some(first_end as u64), "cut at {cut}");
            assert!(s.damaged.is_empty(), "cut at {cut}");
        }
        let mut zeros = whole[..first_end].to_vec();
        zeros.extend([0u8; 40]);
        assert_eq!(scan(&zeros, 1, true).torn, Some(first_end as u64));
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_damage_and_the_records_after_it_kept() {
        let mut bytes = segment(&[(1, b"{\"a\":1}"), (2, b"{\"b\":2}"), (3, b"{\"c\":3}")]);
        let second = MAGIC.len() + HEADER + 7;
        bytes[second + HEADER + 2] ^= 0x20;
        let s = scan(&bytes, 1, true);
        assert_eq!(s.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            s.damaged,
            [Damage {
                offset: second as u64,
                len: (HEADER + 7) as u64
            }]
        );
        assert_eq!(s.torn, None);
        // The last record damaged whole is damage too (it may have been acknowledged).
        let mut last = segment(&[(1, b"{\"a\":1}"), (2, b"{\"b\":2}")]);
        let n = last.len();
        last[n - 2] ^= 0x01;
        let s = scan(&last, 1, true);
        assert_eq!((s.records.len(), s.damaged.len(), s.torn), (1, 1, None));
        // A rolled segment has no torn tail: a cut there is damage.
        let whole = segment(&[(1, b"{\"a\":1}"), (2, b"{\"b\":22}")]);
        let s = scan(&whole[..whole.len() - 3], 1, false);
        assert_eq!((s.records.len(), s.damaged.len(), s.torn), (1, 1, None));
    }

    #[test]
    fn a_segment_cut_at_its_creation_is_torn_and_a_foreign_one_damaged() {
        assert_eq!(scan(&MAGIC[..3], 0, true).torn, Some(0));
        assert_eq!(scan(b"", 0, true).torn, Some(0));
        let s = scan(b"not a segment at all", 0, true);
        assert_eq!(s.damaged.len(), 1);
    }
}
