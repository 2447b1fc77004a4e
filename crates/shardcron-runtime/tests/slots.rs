//! Slot orders in the generation: a join moves items only to the newcomer, and an
//! instance that a job cannot use leaving (or joining) moves none of that job's
//! items, because each job selector keeps its own `push`/`swap_remove` order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Backend, Env, config, eventually, start};
use shardcron_core::job::JobFile;
use shardcron_runtime::{Cluster, Instance, JobPlacement};

const T: Duration = Duration::from_secs(15);

fn assignment(i: &Instance, job: &str) -> BTreeMap<String, Vec<u32>> {
    match i.placement(job) {
        Some(JobPlacement::Assigned(a)) => a,
        _ => BTreeMap::new(),
    }
}

fn owner_of(a: &BTreeMap<String, Vec<u32>>) -> BTreeMap<u32, String> {
    a.iter()
        .flat_map(|(id, items)| items.iter().map(move |i| (*i, id.clone())))
        .collect()
}

fn labeled(name: &str, region: &str) -> shardcron_runtime::InstanceConfig {
    let mut c = config(name);
    c.labels = BTreeMap::from([("region".to_string(), region.to_string())]);
    c
}

async fn joins_move_only_to_the_newcomer_and_other_selectors_are_untouched(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    let spec = JobFile::from_toml(
        "[[job]]\nname = \"eu-sync\"\nevery = \"5s\"\nshards = 40\nstrategy = \"consistent\"\ncommand = [\"/bin/true\"]\nlabels = { region = \"eu\" }\n",
    )
    .expect("job")
    .jobs
    .remove(0);
    cluster.create_job(&spec).await.expect("create");
    let e1 = start(&env, labeled("e1", "eu")).await;
    let u1 = start(&env, labeled("u1", "us")).await;
    let e2 = start(&env, labeled("e2", "eu")).await;
    let u2 = start(&env, labeled("u2", "us")).await;
    eventually("two eu instances share the job", T, || {
        let a = assignment(&e1, "eu-sync");
        a.len() == 2 && a.values().all(|v| v.len() == 20)
    })
    .await;
    let before = owner_of(&assignment(&e1, "eu-sync"));

    // An instance the job cannot use leaves, and one joins: nothing moves.
    u1.shutdown().await.expect("u1 leaves");
    let _u3 = start(&env, labeled("u3", "us")).await;
    eventually("us membership changed", T, || {
        e1.generation().is_some_and(|g| {
            g.members.len() == 4 && !g.members.iter().any(|m| m.id.starts_with("u1-"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        owner_of(&assignment(&e1, "eu-sync")),
        before,
        "us churn moves no eu item"
    );
    drop(u2);

    // An eu instance joins: every moved item goes to it, and it takes its share.
    let e3 = start(&env, labeled("e3", "eu")).await;
    let e3_id = e3.id().expect("id");
    eventually("three eu instances", T, || {
        assignment(&e1, "eu-sync").len() == 3
    })
    .await;
    let after = owner_of(&assignment(&e1, "eu-sync"));
    let moved: Vec<u32> = (0..40).filter(|i| before.get(i) != after.get(i)).collect();
    assert!(
        moved.iter().all(|i| after.get(i) == Some(&e3_id)),
        "items moved only to the newcomer"
    );
    assert!(
        (13..=14).contains(&moved.len()),
        "the newcomer took its share: {}",
        moved.len()
    );
    assert_eq!(e2.placement("eu-sync"), e1.placement("eu-sync"));
}

on_both_backends!(joins_move_only_to_the_newcomer_and_other_selectors_are_untouched);
