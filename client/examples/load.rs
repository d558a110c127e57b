//! A simple write/read load against a running cluster, for a first
//! throughput figure (not a benchmark: no warm-up, no latency histogram).
//!
//! ```text
//! cargo run -p atoll-client --example load -- [endpoints] [clients] [writes] [value_bytes]
//! ```
//! Defaults: the `atoll dev` endpoints, 64 clients, 20000 writes, 256 bytes.

use std::time::Instant;

use atoll_client::{Client, Consistency, DEV_ENDPOINTS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoints: Vec<String> = match args.first() {
        Some(e) => e.split(',').map(str::to_string).collect(),
        None => DEV_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
    };
    let clients: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let writes: usize = args.get(2).map_or(Ok(20_000), |s| s.parse())?;
    let value_bytes: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let client = Client::connect(endpoints).await?;
    let value = vec![b'x'; value_bytes];

    for (phase, reads) in [("write", false), ("linearizable read", true)] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (client, value) = (client.clone(), value.clone());
                tokio::spawn(async move {
                    for i in (c..writes).step_by(clients) {
                        let key = format!("load-{i:08}");
                        if reads {
                            client.get_with(&key, Consistency::Linearizable).await?;
                        } else {
                            client.put(&key, &value).await?;
                        }
                    }
                    Ok::<_, atoll_client::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{phase}: {writes} ops, {clients} clients, {value_bytes}-byte values: {secs:.2}s, {:.0} ops/s",
            writes as f64 / secs
        );
    }
    Ok(())
}
