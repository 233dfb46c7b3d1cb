//! The trace id of the request being served, for the log lines written while it is: set by a
//! thread-local cell around each poll of the request's future (an assignment, whatever the
//! log level), and written into a line by `WithTraceId`, the event format of `engine serve`,
//! only when a line is written. A `tracing` span per request did the same, but cost a span's
//! creation, entry and exit per request when `info` was on, and at `warn` (the span then
//! disabled) left the trace id out of the warnings.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::task::Poll;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::trace_context::TraceId;

thread_local! {
    static CURRENT: Cell<Option<u128>> = const { Cell::new(None) };
}

/// The trace id of the request being polled on this thread, if any.
pub fn current() -> Option<TraceId> {
    CURRENT.with(Cell::get).map(TraceId)
}

/// Restores the cell's previous value when a poll ends, also by a panic.
struct Restore(Option<u128>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Runs `fut` with `trace` as the current trace id of every poll (so of every log line the
/// future writes on its own task; a task it spawns is not covered, as a span would not be).
pub async fn with_trace<F: Future>(trace: TraceId, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(trace.0))));
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(v),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// An event format that adds the current request's trace id to a line written while a
/// request is polled: in JSON as the `request` span's field (`"span":{"trace_id":..}`, the
/// shape the per-request span gave), in text as a last `trace_id=` field. Lines written
/// outside a request are the inner format's, untouched.
pub struct WithTraceId<E> {
    inner: E,
    json: bool,
}

impl<E> WithTraceId<E> {
    /// Wraps `inner`, which writes JSON lines when `json`.
    pub fn new(inner: E, json: bool) -> WithTraceId<E> {
        WithTraceId { inner, json }
    }
}

impl<S, N, E> FormatEvent<S, N> for WithTraceId<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
    FormattedFields<N>: 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(trace) = current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let end = line.trim_end_matches('\n').len();
        let newline = line[end..].to_owned();
        line.truncate(end);
        if self.json && line.ends_with('}') {
            line.pop();
            if line.contains("\"span\":{") {
                write!(line, ",\"trace_id\":\"{trace}\"}}")?;
            } else {
                write!(
                    line,
                    ",\"span\":{{\"trace_id\":\"{trace}\",\"name\":\"request\"}}}}"
                )?;
            }
        } else {
            write!(line, " trace_id={trace}")?;
        }
        line.push_str(&newline);
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_trace_id_is_current_only_while_its_future_is_polled() {
        assert!(current().is_none());
        let seen = with_trace(TraceId(7), async {
            let before = current().map(|t| t.0);
            tokio::task::yield_now().await;
            let nested = with_trace(TraceId(9), async { current().map(|t| t.0) }).await;
            (before, nested, current().map(|t| t.0))
        })
        .await;
        assert_eq!(seen, (Some(7), Some(9), Some(7)));
        assert!(current().is_none());
    }

    /// The lines a subscriber with `WithTraceId` writes for one warning inside a request and
    /// one outside, in JSON or text.
    fn lines(json: bool) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let writer = move || Sink(sink.clone());
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN);
        let subscriber: Box<dyn Subscriber + Send + Sync> = if json {
            Box::new(
                builder
                    .json()
                    .map_event_format(|f| WithTraceId::new(f, true))
                    .finish(),
            )
        } else {
            Box::new(
                builder
                    .map_event_format(|f| WithTraceId::new(f, false))
                    .finish(),
            )
        };
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(with_trace(TraceId(0xabc), async {
                tracing::warn!(n = 1, "inside");
            }));
            tracing::warn!(n = 2, "outside");
        });
        let text = String::from_utf8(out.lock().expect("out").clone()).expect("UTF-8");
        text.lines().map(str::to_owned).collect()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("out").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_written_inside_a_request_carries_its_trace_id() {
        let id = "00000000000000000000000000000abc";
        let json = lines(true);
        assert_eq!(json.len(), 2, "{json:?}");
        let inside: serde_json::Value = serde_json::from_str(&json[0]).expect("JSON");
        assert_eq!(inside["span"]["trace_id"], id, "{inside}");
        assert_eq!(inside["fields"]["n"], 1, "{inside}");
        let outside: serde_json::Value = serde_json::from_str(&json[1]).expect("JSON");
        assert!(outside.get("span").is_none(), "{outside}");
        let text = lines(false);
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("inside") && text[0].ends_with(&format!(" trace_id={id}")),
            "{text:?}"
        );
        assert!(!text[1].contains("trace_id"), "{text:?}");
    }
}
