//! Cluster mode, ownership of a live stream (issue 17): leases in a real Redis with a
//! fencing epoch. One claim wins however many nodes try at once; the epoch grows with every
//! claim and never goes below what PostgreSQL last saw; an expired owner can neither renew
//! nor release its successor's lease; Redis going away is an error within the timeout, and
//! the same handle works again when it is back. Each test has its own key prefix.

mod common;

use std::time::Duration;

use common::services::{redis_cleanup, redis_prefix, redis_url, Cuttable};
use media_server::cluster::lease::{Claim, Leases};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_millis(1000);

async fn node(prefix: &str, name: &str) -> Leases {
    Leases::connect(&redis_url(), prefix, name, TTL, TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis at {} is unreachable ({e}); tests/run.sh starts one",
                redis_url()
            )
        })
}

#[tokio::test]
async fn one_of_three_nodes_claiming_at_once_wins_and_the_others_see_it() {
    let prefix = redis_prefix("claim3");
    let (a, b, c) = (
        node(&prefix, "a").await,
        node(&prefix, "b").await,
        node(&prefix, "c").await,
    );
    let (ra, rb, rc) = tokio::join!(a.claim("s1", 0), b.claim("s1", 0), c.claim("s1", 0));
    let results = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
    let won: Vec<_> = results
        .iter()
        .zip(["a", "b", "c"])
        .filter_map(|(r, n)| matches!(r, Claim::Won(_)).then_some(n))
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in &results {
        match r {
            Claim::Won(l) => assert_eq!(l.epoch, 1),
            Claim::Held(by) => assert_eq!(by, won[0]),
        }
    }
    assert_eq!(a.owner("s1").await.unwrap().as_deref(), Some(won[0]));
    assert_eq!(a.owner("other").await.unwrap(), None);
    redis_cleanup(&prefix).await;
}

#[tokio::test]
async fn epochs_grow_with_every_claim_and_never_go_below_the_floor() {
    let prefix = redis_prefix("epoch");
    let a = node(&prefix, "a").await;
    let b = node(&prefix, "b").await;
    let Claim::Won(first) = a.claim("s", 0).await.unwrap() else {
        panic!("free stream")
    };
    assert!(a.release(&first).await.unwrap());
    let Claim::Won(second) = b.claim("s", 0).await.unwrap() else {
        panic!("released stream")
    };
    assert_eq!(second.epoch, first.epoch + 1);
    assert!(b.release(&second).await.unwrap());
    // Redis lost its data (or a fresh Redis): PostgreSQL's epoch 41 is the floor.
    let Claim::Won(third) = a.claim("s", 41).await.unwrap() else {
        panic!("released stream")
    };
    assert_eq!(third.epoch, 42);
    redis_cleanup(&prefix).await;
}

#[tokio::test]
async fn an_expired_owner_cannot_renew_or_release_its_successors_lease() {
    let prefix = redis_prefix("expire");
    let a = node(&prefix, "a").await;
    let b = node(&prefix, "b").await;
    let Claim::Won(old) = a.claim("s", 0).await.unwrap() else {
        panic!("free stream")
    };
    // Renewed in time, it holds.
    tokio::time::sleep(TTL / 2).await;
    assert!(a.renew(&old).await.unwrap());
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(b.claim("s", 0).await.unwrap(), Claim::Held("a".into()));
    // Not renewed (a paused, cut off): it expires, b takes over with a higher epoch.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let Claim::Won(new) = b.claim("s", old.epoch).await.unwrap() else {
        panic!("the expired lease should be free")
    };
    assert!(new.epoch > old.epoch);
    assert!(
        !a.renew(&old).await.unwrap(),
        "fenced: a is no longer the owner"
    );
    assert!(!a.release(&old).await.unwrap());
    assert_eq!(a.owner("s").await.unwrap().as_deref(), Some("b"));
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_an_error_in_time_and_the_handle_recovers() {
    let upstream: std::net::SocketAddr = {
        let u = url::Url::parse(&redis_url()).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(6379))
            .parse()
            .unwrap()
    };
    let proxy = Cuttable::start(upstream).await;
    let prefix = redis_prefix("outage");
    let a = Leases::connect(
        &format!("redis://{}", proxy.addr),
        &prefix,
        "a",
        TTL,
        TIMEOUT,
    )
    .await
    .unwrap();
    let Claim::Won(lease) = a.claim("s", 0).await.unwrap() else {
        panic!("free stream")
    };
    proxy.cut();
    let started = std::time::Instant::now();
    assert!(a.renew(&lease).await.is_err(), "Redis is away");
    assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    proxy.restore();
    // The same handle reconnects by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = a.claim("s2", 0).await {
            assert!(matches!(c, Claim::Won(_)), "{c:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis_cleanup(&prefix).await;
}
