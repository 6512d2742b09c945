//! Helpers of the push-system tests (tests/push.rs, tests/job.rs,
//! tests/logic.rs, tests/comet.rs, tests/up.rs): what they would otherwise each
//! copy. Imports the crate's public `im` and `libs::resp_client` only.

use std::collections::BTreeMap;

use reborn::im::job::reaper;
use reborn::im::queue;
use reborn::libs::resp_client::RespConn;

/// The consumers of the job group on `stream` and their pending counts
/// (empty while the group does not exist).
pub async fn group_consumers(r: &mut RespConn, stream: &str) -> BTreeMap<String, i64> {
    let Ok(reply) = r.call(&["XINFO", "CONSUMERS", stream, queue::GROUP]).await else {
        return BTreeMap::new();
    };
    reaper::from_xinfo(reply)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect()
}
