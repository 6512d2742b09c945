//! The order of one sequence of calls at each comet: a call to a comet starts
//! once the sequence's previous call to that comet ended, while calls to
//! other comets go their own pace. A room's batches are one such sequence,
//! and so are the pushes and broadcasts of one stream. Before, each waited
//! for every comet, so one hung comet held up the others' clients until job's
//! call to it timed out. Imports nothing of reborn's.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::oneshot;

/// Where one sequence of calls is at each comet: the end of its last call
/// to it, which the next call to that comet waits for.
#[derive(Debug, Default)]
pub struct CometOrder {
    /// Closes when the last call to that comet ended (its sender is dropped).
    last: HashMap<String, oneshot::Receiver<()>>,
}

impl CometOrder {
    /// Makes `call` to `comet` start once the previous call to that comet
    /// ended (answered, given up or dropped).
    pub fn after_previous<F: Future>(
        &mut self,
        comet: &str,
        call: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        let (ended, end) = oneshot::channel::<()>();
        let previous = self.last.insert(comet.to_string(), end);
        async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let out = call.await;
            drop(ended);
            out
        }
    }

    /// Forgets the comets `keep` refuses whose last call ended (comets that
    /// left): a call still running is kept, so a comet that comes back is
    /// still called in order.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|comet, end| {
            keep(comet) || matches!(end.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comet_that_left_is_forgotten_once_its_last_call_ended() {
        let mut order = CometOrder::default();
        let running = order.after_previous("a", std::future::pending::<()>());
        let done = order.after_previous("b", async {});
        futures::executor::block_on(done);
        order.retain(|_| false);
        assert_eq!(order.last.len(), 1, "a's call still runs: kept");
        drop(running);
        order.retain(|_| false);
        assert!(order.last.is_empty());
    }
}
