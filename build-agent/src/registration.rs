//! The host's registration key under a kept-alive lease
//! (`leengine_store::lease`). If the agent or the host dies, keep-alives
//! stop and etcd deletes the key within the TTL; core sees the delete and
//! moves the host's unfinished tasks.

use leengine_build::BuilderInfo;
use leengine_store::lease::Source;
use tokio::sync::watch;

/// The builder record, republished whenever the running count changes.
pub struct Running {
    info: BuilderInfo,
    running: watch::Receiver<u32>,
}

impl Running {
    pub fn new(info: BuilderInfo, running: watch::Receiver<u32>) -> Self {
        Self { info, running }
    }
}

impl Source for Running {
    async fn value(&mut self) -> Vec<u8> {
        self.info.running = *self.running.borrow_and_update();
        leengine_store::record::json(&self.info)
    }

    async fn changed(&mut self) {
        if self.running.changed().await.is_err() {
            // The agent is going away; the stop revokes the record.
            std::future::pending::<()>().await;
        }
    }
}
