//! etcd as a register store, to prove the harness against a system we did
//! not write: with serializable (member-local) reads a partition must show
//! up as a violation; with linearizable reads it must not.
//!
//! Each client is pinned to one member, so the processes that talk to a
//! member cut into a minority keep reading from it.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_jepsen::{Outcome, Reply};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};

use super::register::{parse, Registers};

/// A client of one etcd member.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    serializable: bool,
}

impl Etcd {
    /// One client per member address (`host:port`).
    pub async fn connect(addresses: &[String], serializable: bool) -> anyhow::Result<Vec<Etcd>> {
        let options = ConnectOptions::new()
            .with_timeout(Duration::from_secs(1))
            .with_connect_timeout(Duration::from_secs(1));
        let mut stores = Vec::new();
        for address in addresses {
            let client =
                Client::connect([format!("http://{address}")], Some(options.clone())).await?;
            stores.push(Etcd {
                client,
                serializable,
            });
        }
        Ok(stores)
    }

    /// Waits until a write through the first member succeeds.
    pub async fn wait_ready(stores: &[Etcd], patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            if let Some(store) = stores.first() {
                if store
                    .client
                    .clone()
                    .put("jepsen-warmup", "1", None)
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

/// Shard → the node index of its leader: etcd has one shard, called 0
/// here, led by the member that reports itself as the leader.
pub async fn leaders(stores: &[Etcd]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for (i, store) in stores.iter().enumerate() {
        if let Ok(status) = store.client.clone().status().await {
            if status
                .header()
                .is_some_and(|h| h.member_id() == status.leader())
            {
                out.insert(0, i);
            }
        }
    }
    out
}

impl Registers for Etcd {
    async fn read(&self, key: &str) -> Outcome {
        let options = self
            .serializable
            .then(|| GetOptions::new().with_serializable());
        match self.client.clone().get(key, options).await {
            Ok(resp) => Outcome::Ok(Reply::Value(
                resp.kvs().first().and_then(|kv| parse(kv.value())),
            )),
            Err(_) => Outcome::Fail,
        }
    }

    async fn write(&self, key: &str, value: i64) -> Outcome {
        match self.client.clone().put(key, value.to_string(), None).await {
            Ok(_) => Outcome::Ok(Reply::Done),
            // etcd does not say whether a failed write was applied.
            Err(_) => Outcome::Ambiguous,
        }
    }

    async fn cas(&self, key: &str, expected: Option<i64>, new: i64) -> Outcome {
        let compare = match expected {
            Some(v) => Compare::value(key, CompareOp::Equal, v.to_string()),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, new.to_string(), None)])
            .or_else([TxnOp::get(key, None)]);
        match self.client.clone().txn(txn).await {
            Ok(resp) if resp.succeeded() => Outcome::Ok(Reply::Done),
            Ok(resp) => {
                let current = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => {
                        Some(get.kvs().first().and_then(|kv| parse(kv.value())))
                    }
                    _ => None,
                });
                match current {
                    Some(current) => Outcome::Ok(Reply::Mismatch { current }),
                    None => Outcome::Fail,
                }
            }
            Err(_) => Outcome::Ambiguous,
        }
    }
}
