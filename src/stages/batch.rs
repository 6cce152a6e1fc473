//! Batching for sinks: collect events from the input up to `max` or until `max_wait` after the
//! first one, then hand the batch over; at the end of the input, flush what is left.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Input;
use crate::event::Event;

/// Runs `write` on batches of at most `max` events, each sent at the latest `max_wait` after
/// its first event arrived, until the input closes and everything has been written.
pub async fn run_batched<F, Fut>(input: &mut Input, max: usize, max_wait: Duration, mut write: F)
where
    F: FnMut(Vec<Event>) -> Fut,
    Fut: Future<Output = ()>,
{
    let max = max.max(1);
    let mut buf: Vec<Event> = Vec::with_capacity(max.min(4096));
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    while open || !buf.is_empty() {
        let flush_now = buf.len() >= max || (!open && !buf.is_empty());
        if !flush_now {
            tokio::select! {
                b = input.recv() => match b {
                    Some(b) => {
                        if buf.is_empty() {
                            deadline = Some(Instant::now() + max_wait);
                        }
                        buf.extend(b);
                        if buf.len() < max { continue; }
                    }
                    None => { open = false; continue; }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
        }
        while !buf.is_empty()
            && (buf.len() >= max || !open || deadline.is_some_and(|d| d <= Instant::now()))
        {
            let rest = buf.split_off(buf.len().min(max));
            let batch = std::mem::replace(&mut buf, rest);
            write(batch).await;
        }
        deadline = (!buf.is_empty()).then(|| Instant::now() + max_wait);
    }
}
