//! W3C trace context: a caller's `traceparent` (and `tracestate`) read, or a new trace
//! started, and the `traceparent` of each outbound call made for that request (the same trace
//! id and flags, a new span id per call).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::HeaderValue;

/// The largest `tracestate` passed on to sources; a longer one is dropped.
pub const MAX_TRACESTATE: usize = 512;

/// A request's trace: its id, its flags, and the caller's `tracestate` (when usable); the span
/// of this request (or run) and the caller's span it continues, for exported spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub trace_id: u128,
    pub flags: u8,
    pub state: Option<HeaderValue>,
    /// The span of the request (or run) in this engine: the parent of its outbound calls.
    pub span_id: u64,
    /// The caller's span (the parent id of its `traceparent`).
    pub parent_span: Option<u64>,
}

/// What an outbound call carries of the request that made it: the request id
/// (`X-Request-Id`) and the trace (`traceparent`, `tracestate`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext {
    pub request_id: String,
    pub trace: Trace,
}

impl TraceContext {
    /// A context with a new trace (cron runs, connectivity checks).
    pub fn fresh(request_id: impl Into<String>) -> TraceContext {
        TraceContext {
            request_id: request_id.into(),
            trace: Trace::fresh(),
        }
    }
}

impl Trace {
    /// A new trace: sampled flag unset, no `tracestate`.
    pub fn fresh() -> Trace {
        Trace {
            trace_id: new_id128(),
            flags: 0,
            state: None,
            span_id: new_id64(),
            parent_span: None,
        }
    }

    /// The caller's trace when its `traceparent` is a valid version-00 one, else a new
    /// trace; never an error. `tracestate` is kept only with a valid `traceparent` and when
    /// at most [`MAX_TRACESTATE`] bytes.
    pub fn from_caller(parent: Option<&[u8]>, state: Option<&HeaderValue>) -> Trace {
        match parent.and_then(parse_parts) {
            Some((trace_id, parent, flags)) => Trace {
                trace_id,
                flags,
                span_id: new_id64(),
                parent_span: Some(parent),
                state: state
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
                    .cloned(),
            },
            None => Trace::fresh(),
        }
    }

    /// The trace id as 32 lowercase hexadecimal digits, formatted without allocating.
    pub fn id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The `traceparent` of one outbound call: this trace, a new span id.
    pub fn outbound(&self) -> HeaderValue {
        self.outbound_as(new_id64())
    }

    /// The `traceparent` of one outbound call whose span is `span` (see `new_span_id`).
    pub fn outbound_as(&self, span: u64) -> HeaderValue {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&mut buf[3..35], self.trace_id);
        buf[35] = b'-';
        hex_into(&mut buf[36..52], u128::from(span));
        buf[52] = b'-';
        hex_into(&mut buf[53..55], u128::from(self.flags));
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// A trace id, shown as 32 lowercase hexadecimal digits.
#[derive(Debug, Clone, Copy)]
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (lowercase, neither id all
/// zeros): the trace id and flags.
pub fn parse_traceparent(v: &[u8]) -> Option<(u128, u8)> {
    parse_parts(v).map(|(trace_id, _, flags)| (trace_id, flags))
}

/// A new span id: never zero, unique within the process.
pub fn new_span_id() -> u64 {
    new_id64()
}

/// The trace id, parent id and flags of a `traceparent` (see `parse_traceparent`).
fn parse_parts(v: &[u8]) -> Option<(u128, u64, u8)> {
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let parent = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    if trace_id == 0 || parent == 0 {
        return None;
    }
    Some((
        trace_id,
        u64::try_from(parent).ok()?,
        u8::try_from(flags).ok()?,
    ))
}

/// Lowercase hexadecimal digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((n << 4) | u128::from(v))
    })
}

/// Writes the low `out.len()` hexadecimal digits of `n` into `out`.
fn hex_into(out: &mut [u8], mut n: u128) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A random 128-bit key drawn once per process.
fn key() -> u128 {
    static KEY: OnceLock<u128> = OnceLock::new();
    *KEY.get_or_init(|| uuid::Uuid::new_v4().as_u128())
}

/// The SplitMix64 finaliser: distinct inputs give distinct, well-spread outputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A new, never-zero 64-bit id: a process counter mixed with the process key (an atomic
/// increment, not a call to the system's random source).
fn new_id64() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    mix(n ^ (key() as u64)).max(1)
}

/// A new, never-zero 128-bit trace id: the process key's high half and a new 64-bit id.
fn new_id128() -> u128 {
    (key() & !u128::from(u64::MAX)) | u128::from(new_id64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 1))
        );
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(parse_traceparent(bad), None);
        }
    }

    #[test]
    fn outbound_keeps_the_trace_with_a_new_span() {
        let t = Trace::from_caller(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        let (a, b) = (t.outbound(), t.outbound());
        assert_ne!(a, b);
        for v in [a, b] {
            let v = v.as_bytes();
            assert_eq!(parse_traceparent(v), Some((t.trace_id, 1)));
            assert_ne!(&v[36..52], b"00f067aa0ba902b7");
        }
    }
}
