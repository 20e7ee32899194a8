//! Housekeeping the leader proposes: forgetting single-token revocations once their tokens
//! have expired, so the revocation list every node holds in memory stays as small as the set
//! of live revoked tokens. The rules decide what is expired by the command's time, never the
//! applying node's clock.

use std::sync::Arc;
use std::time::Duration;

use authsec_domain::{Actor, Command, Principal};
use authsec_storage::StateView;
use tokio::sync::watch;

use crate::services::Ctx;

/// How often the leader looks for expired revocations.
const EVERY: Duration = Duration::from_secs(30);

pub async fn prune_loop(ctx: Arc<Ctx>, view: StateView, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let leading = ctx.writer.raft().metrics().borrow().current_leader == Some(ctx.node_id);
        if !leading {
            continue;
        }
        let now = crate::issuer::now_ms();
        let due = view
            .read()
            .idx
            .revoked_by_expiry
            .first()
            .is_some_and(|(exp, _)| *exp <= now);
        if !due {
            continue;
        }
        let actor = Actor {
            principal: Principal::System,
            via_node: ctx.node_id,
        };
        match ctx.write(actor, Command::PruneRevocations).await {
            Ok((receipt, _)) => {
                tracing::info!(
                    log_index = receipt.log_index,
                    "pruned expired token revocations"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "pruning expired token revocations failed")
            }
        }
    }
}
