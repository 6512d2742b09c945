//! Online reporting: every `online_interval` (10 s) comet sends its room
//! counts to logic (RenewOnline) and keeps the cluster-wide counts logic
//! answers with, which heartbeat replies carry. A failed report is retried
//! after a second, as goim does. Imports `hub` and `logic_link`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::logic_link::LinkError;
use crate::libs::outage::Outage;

/// The pause before retrying a failed report.
const RETRY: Duration = Duration::from_secs(1);

/// Reports room counts until `shutdown`, the first time right away.
pub async fn report_loop(hub: Arc<Hub>, interval: Duration, shutdown: CancellationToken) {
    let mut outage = Outage::default();
    loop {
        let counts = hub.buckets.room_counts();
        let pause = match hub.link.renew_online(&hub.server_id, counts).await {
            Ok(all) => {
                hub.set_all_online(all);
                outage.succeeded("RenewOnline");
                interval
            }
            Err(e) => {
                if matches!(e, LinkError::NoLogic) && !outage.is_on() {
                    tracing::debug!("no logic to report room counts to yet");
                } else {
                    outage.failed("RenewOnline", &e);
                }
                RETRY.min(interval)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
