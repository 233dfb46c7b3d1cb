//! The dead letters of a push connector's Redis queue (`--push-queue`) as a `DeadLetterStore`,
//! so that the admin API, the CLI and the status page list, show, replay and delete them as
//! they do the state directory's.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::stream_queue::{Entry, StreamQueue, StreamQueueError, is_entry_id};
use crate::runtime::dead_letters::{
    DeadLetterError, DeadLetterStore, Letter, LetterId, Page, Summary, Taken,
};

/// A connector's dead-letter stream in Redis.
pub(super) struct StreamLetters {
    pub(super) queue: Arc<StreamQueue>,
}

impl StreamLetters {
    /// The name a letter is claimed by in this process (one replay or delete at a time).
    fn key(&self, id: &LetterId) -> PathBuf {
        PathBuf::from(format!("redis:{}/{}", self.queue.dead_key(), id.as_str()))
    }

    /// One letter, whole.
    async fn read(&self, id: &LetterId) -> Result<Letter, DeadLetterError> {
        match self.queue.dead_letter(id.as_str()).await {
            Ok(Some(entry)) => Ok(letter(entry)),
            Ok(None) => Err(DeadLetterError::NotFound(id.as_str().to_owned())),
            Err(e) => Err(storage(e)),
        }
    }
}

/// A Redis failure as the store's error (the server's address only, never its URL).
fn storage(e: StreamQueueError) -> DeadLetterError {
    DeadLetterError::Storage(e.to_string())
}

/// A dead-letter entry as a letter; an id Redis made always reads as a letter id.
fn letter(entry: Entry) -> Letter {
    Letter {
        id: LetterId::parse(&entry.id).unwrap_or_else(|_| unreachable_id()),
        received: Some(entry.received),
        reason: entry.reason,
        outcome: entry.outcome,
        payload: entry.payload.unwrap_or(Value::Null),
        keys: entry.keys,
        last_replay: None,
        bytes: entry.size as u64,
    }
}

/// The id of an entry Redis made (`MS-SEQ`, digits and a dash) is a letter id; this stands
/// for the impossible other case.
fn unreachable_id() -> LetterId {
    LetterId::parse("0-0").expect("0-0 is a letter id")
}

impl DeadLetterStore for StreamLetters {
    fn page(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, DeadLetterError>> {
        Box::pin(async move {
            // A cursor this queue could never have given is refused: started from the first
            // instead, a paging client would go round for ever.
            if let Some(a) = after.as_ref().filter(|a| !is_entry_id(a.as_str())) {
                return Err(DeadLetterError::InvalidId(a.as_str().to_owned()));
            }
            let after = after.map(|a| a.as_str().to_owned());
            let (total, entries) = self
                .queue
                .dead_page(after.as_deref(), limit + 1)
                .await
                .map_err(storage)?;
            let mut letters: Vec<Summary> = entries
                .into_iter()
                .map(|e| {
                    let l = letter(e);
                    Summary {
                        id: l.id,
                        received: l.received,
                        reason: l.reason,
                        bytes: l.bytes,
                    }
                })
                .collect();
            let next = (letters.len() > limit).then(|| {
                letters.truncate(limit);
                letters.last().map(|l| l.id.clone())
            });
            Ok(Page {
                total,
                letters,
                next: next.flatten(),
            })
        })
    }

    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Letter, DeadLetterError>> {
        Box::pin(async move { self.read(&id).await })
    }

    fn take(&self, id: LetterId) -> BoxFuture<'_, Result<Taken, DeadLetterError>> {
        Box::pin(async move { Taken::claim(self.key(&id), &id, self.read(&id)).await })
    }

    fn settle(&self, taken: Taken) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        Box::pin(async move {
            self.queue
                .delete_dead(taken.letter.id.as_str())
                .await
                .map(drop)
                .map_err(storage)
        })
    }

    fn keep(
        &self,
        taken: Taken,
        reason: String,
        outcome: Option<Value>,
        _at: String,
    ) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        Box::pin(async move {
            self.queue
                .rebury(taken.letter.id.as_str(), &reason, outcome.as_ref())
                .await
                .map_err(storage)
        })
    }

    fn remove(&self, id: LetterId) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let taken = self.take(id).await?;
            self.settle(taken).await
        })
    }
}
