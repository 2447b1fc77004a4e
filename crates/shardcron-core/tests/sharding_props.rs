//! Properties of the sharding strategies, through the public API only.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use shardcron_core::hash::mix64;
use shardcron_core::sharding::{Assignment, ShardingInstance, Strategy};

fn instance(id: &str, weight: u32) -> ShardingInstance {
    ShardingInstance {
        id: id.to_owned(),
        weight,
    }
}

/// Instances with distinct ids, in an arbitrary (shuffled) order, weights 0..=5.
fn instances() -> impl proptest::strategy::Strategy<Value = Vec<ShardingInstance>> {
    prop::collection::btree_map("[a-z0-9]{1,8}", 0u32..=5, 0..=12)
        .prop_map(|m| {
            m.into_iter()
                .map(|(id, w)| instance(&id, w))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn equal_weights(n: usize) -> impl proptest::strategy::Strategy<Value = Vec<ShardingInstance>> {
    prop::collection::btree_set("[a-z0-9]{1,8}", n..=n)
        .prop_map(|s| s.iter().map(|id| instance(id, 1)).collect::<Vec<_>>())
        .prop_shuffle()
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop::sample::select(Strategy::ALL.to_vec())
}

fn weight(i: &ShardingInstance) -> u64 {
    u64::from(i.weight.max(1))
}

/// Owner of every item, checking on the way that each is assigned exactly once.
fn owners(a: &Assignment, items: u32) -> Result<Vec<String>, TestCaseError> {
    let mut owner: Vec<Option<String>> = vec![None; items as usize];
    for (id, list) in a {
        for &item in list {
            prop_assert!(item < items, "item {item} out of range 0..{items}");
            let slot = &mut owner[item as usize];
            prop_assert!(slot.is_none(), "item {item} assigned twice");
            *slot = Some(id.clone());
        }
    }
    owner
        .into_iter()
        .enumerate()
        .map(|(item, o)| o.ok_or_else(|| TestCaseError::fail(format!("item {item} unassigned"))))
        .collect()
}

proptest! {
    // Integration tests have no lib.rs next to them for proptest's default
    // regression files; a failure prints the minimal failing input instead.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_item_exactly_once_to_given_instances(
        s in strategy(),
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        let a = s.assign(&job, items, &insts);
        if insts.is_empty() {
            prop_assert!(a.is_empty());
            return Ok(());
        }
        let ids: Vec<&String> = insts.iter().map(|i| &i.id).collect();
        let keys: Vec<&String> = a.keys().collect();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort();
        prop_assert_eq!(keys, sorted_ids, "every given instance is a key, no other");
        for list in a.values() {
            prop_assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted ascending: {:?}", list);
            if items == 0 {
                prop_assert!(list.is_empty());
            }
        }
        owners(&a, items)?;
    }

    #[test]
    fn deterministic(
        s in strategy(),
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        let first = s.assign(&job, items, &insts);
        // Fresh copies of the inputs, and many other computations in between.
        let job2 = job.clone();
        let insts2: Vec<ShardingInstance> = insts.to_vec();
        for other in Strategy::ALL {
            let _ = other.assign("unrelated", items / 2, &insts2);
        }
        prop_assert_eq!(&first, &s.assign(&job2, items, &insts2));
        // The output is a BTreeMap: its iteration order is the id order, whatever
        // the order of the instances given.
        let keys: Vec<&String> = first.keys().collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn consistent_ignores_ids(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        // Only the positions and the weights count: renaming every instance gives
        // the same items at every position.
        let renamed: Vec<ShardingInstance> = insts
            .iter()
            .enumerate()
            .map(|(k, i)| instance(&format!("renamed-{k}"), i.weight))
            .collect();
        let a = Strategy::Consistent.assign(&job, items, &insts);
        let b = Strategy::Consistent.assign(&job, items, &renamed);
        for (old, new) in insts.iter().zip(&renamed) {
            prop_assert_eq!(&a[&old.id], &b[&new.id]);
        }
    }

    #[test]
    fn average_family_is_balanced(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        prop_assume!(!insts.is_empty());
        let n = insts.len();
        let q = items as usize / n;
        for s in [Strategy::Average, Strategy::Odevity, Strategy::RoundRobin] {
            let a = s.assign(&job, items, &insts);
            let lens: Vec<usize> = a.values().map(Vec::len).collect();
            let (min, max) = (lens.iter().min().copied(), lens.iter().max().copied());
            prop_assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "{}: {:?}", s.name(), lens);
            prop_assert!(lens.iter().all(|&l| l == q || l == q + 1), "{}: {:?}", s.name(), lens);
            // Each instance has at most two runs: a block and one leftover item.
            for list in a.values() {
                let runs = 1 + list.windows(2).filter(|w| w[1] != w[0] + 1).count();
                prop_assert!(list.is_empty() || runs <= 2, "{}: {:?}", s.name(), list);
            }
        }
    }

    #[test]
    fn weighted_strategies_follow_weights(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        prop_assume!(!insts.is_empty());
        let total: u64 = insts.iter().map(weight).sum();
        for s in [Strategy::Weighted, Strategy::Consistent] {
            let a = s.assign(&job, items, &insts);
            for inst in &insts {
                let share = u64::from(items) * weight(inst);
                let (lo, hi) = (share / total, share.div_ceil(total));
                let got = a[&inst.id].len() as u64;
                prop_assert!(
                    lo <= got && got <= hi,
                    "{}: {} has {} items, share {}/{}", s.name(), inst.id, got, share, total
                );
            }
        }
        // `weighted` gives every instance one contiguous block, in instance order.
        let a = Strategy::Weighted.assign(&job, items, &insts);
        let mut next = 0u32;
        for inst in &insts {
            let list = &a[&inst.id];
            let expected: Vec<u32> = (next..next + list.len() as u32).collect();
            prop_assert_eq!(list, &expected);
            next += list.len() as u32;
        }
        prop_assert_eq!(next, items);
    }

    #[test]
    fn consistent_equal_weights_is_exactly_balanced(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in (1usize..=12).prop_flat_map(equal_weights),
    ) {
        let n = insts.len();
        let q = items as usize / n;
        let a = Strategy::Consistent.assign(&job, items, &insts);
        prop_assert!(a.values().all(|l| l.len() == q || l.len() == q + 1));
    }

    /// A join (append), equal weights: every item that moves goes to the newcomer,
    /// which gets floor or ceil of T/(n+1).
    #[test]
    fn consistent_join_moves_items_only_to_the_newcomer(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in (2usize..=13).prop_flat_map(equal_weights),
    ) {
        let (before, newcomer) = insts.split_at(insts.len() - 1);
        let newcomer = &newcomer[0].id;
        let old = Strategy::Consistent.assign(&job, items, before);
        let new = Strategy::Consistent.assign(&job, items, &insts);
        for (id, list) in &new {
            if id != newcomer {
                prop_assert!(list.iter().all(|i| old[id].contains(i)), "{} gained items", id);
            }
        }
        let share = new[newcomer].len() as u32;
        let n1 = insts.len() as u32;
        prop_assert!(share == items / n1 || share == items.div_ceil(n1));
    }

    /// A join with unequal weights: old instances give items to the newcomer; in a
    /// rare case an old instance also receives one item, and then gives none.
    #[test]
    fn consistent_weighted_join_moves_almost_only_to_the_newcomer(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in instances(),
    ) {
        prop_assume!(insts.len() >= 2);
        let (before, newcomer) = insts.split_at(insts.len() - 1);
        let newcomer = &newcomer[0].id;
        let old = Strategy::Consistent.assign(&job, items, before);
        let new = Strategy::Consistent.assign(&job, items, &insts);
        for (id, list) in &new {
            if id == newcomer {
                continue;
            }
            let gained = list.iter().filter(|i| !old[id].contains(i)).count();
            prop_assert!(gained <= 1, "{} gained {} items", id, gained);
            if gained == 1 {
                prop_assert!(old[id].iter().all(|i| list.contains(i)), "{} gained and lost", id);
            }
        }
    }

    /// A leave (`swap_remove`), equal weights: only the items of the leaver and of
    /// the last instance move, at most 2 x ceil(T/(n+1)) of them.
    #[test]
    fn consistent_swap_remove_leave_moves_only_two_instances_items(
        job in "[a-z0-9-]{0,16}",
        items in 0u32..=300,
        insts in (2usize..=13).prop_flat_map(equal_weights),
        at in 0usize..13,
    ) {
        let at = at % insts.len();
        let (leaver, last) = (insts[at].id.clone(), insts[insts.len() - 1].id.clone());
        let mut after = insts.clone();
        after.swap_remove(at);
        let old = Strategy::Consistent.assign(&job, items, &insts);
        let new = Strategy::Consistent.assign(&job, items, &after);
        let old_owner = owners(&old, items)?;
        let new_owner = owners(&new, items)?;
        let mut moved = 0u32;
        for (o, n) in old_owner.iter().zip(&new_owner) {
            if o != n {
                moved += 1;
                prop_assert!(*o == leaver || *o == last, "an item of {} moved", o);
            }
        }
        prop_assert!(moved <= 2 * items.div_ceil(insts.len() as u32));
    }
}

/// A deterministic pseudo-random sequence (SplitMix64).
struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// Number of items whose owner differs.
fn moved(old: &Assignment, new: &Assignment) -> usize {
    let old_owner: BTreeMap<u32, &String> = old
        .iter()
        .flat_map(|(id, list)| list.iter().map(move |&i| (i, id)))
        .collect();
    new.iter()
        .flat_map(|(id, list)| list.iter().map(move |i| (i, id)))
        .filter(|(i, id)| old_owner.get(i) != Some(id))
        .count()
}

/// Movement of `consistent` for one item count: for every `n` in `1..=max_n`, the
/// join (append) from `n` to `n+1` instances and the leave (`swap_remove` at a
/// pseudo-random position) from `n+1` to `n`, over `names` job names.
struct Movement {
    /// Per `n`: Σ moved by the joins, Σ moved by the leaves, largest of each.
    join_sum: Vec<usize>,
    leave_sum: Vec<usize>,
    join_max: Vec<usize>,
    leave_max: Vec<usize>,
}

fn movement(items: u32, max_n: usize, names: usize, seed: u64) -> Movement {
    let mut seq = Seq(seed ^ u64::from(items) << 32);
    let mut m = Movement {
        join_sum: vec![0; max_n + 1],
        leave_sum: vec![0; max_n + 1],
        join_max: vec![0; max_n + 1],
        leave_max: vec![0; max_n + 1],
    };
    for name in 0..names {
        let job = format!("job-{name}-{}", seq.next() % 1000);
        let all: Vec<ShardingInstance> = (0..=max_n)
            .map(|k| {
                instance(
                    &format!("10.0.{}.{k}:{}", seq.next() % 256, seq.next() % 65536),
                    1,
                )
            })
            .collect();
        let prefixes: Vec<Assignment> = (1..=max_n + 1)
            .map(|len| Strategy::Consistent.assign(&job, items, &all[..len]))
            .collect();
        for n in 1..=max_n {
            let join = moved(&prefixes[n - 1], &prefixes[n]);
            let mut after = all[..=n].to_vec();
            after.swap_remove((seq.next() % (n as u64 + 1)) as usize);
            let leave = moved(
                &prefixes[n],
                &Strategy::Consistent.assign(&job, items, &after),
            );
            m.join_sum[n] += join;
            m.leave_sum[n] += leave;
            m.join_max[n] = m.join_max[n].max(join);
            m.leave_max[n] = m.leave_max[n].max(leave);
        }
    }
    m
}

/// The bounds for `consistent`, for every fixed `(T, n)` with `n` in
/// `1..=16` and `T` in a spread of item counts: over many job names one join moves on
/// average at most 1.25 x T/(n+1) items and never more than 2 x ceil(T/(n+1)). A
/// leave (`swap_remove`) never moves more than 2 x ceil(T/(n+1)) either, and on
/// average at most about twice the minimum (it is not bounded by 1.25; see the
/// module docs of `sharding`).
///
/// At least 200 job names per item count, more for small `T`, where a join moves 0
/// or 1 item and 200 names would measure mostly noise.
#[test]
fn consistent_join_and_leave_move_few_items() {
    const MAX_N: usize = 16;
    let (mut join_total, mut leave_total, mut ideal_total) = (0usize, 0usize, 0.0f64);
    for items in [1u32, 2, 3, 5, 10, 16, 25, 50, 99, 128, 200] {
        let names = 200.max((300 * (MAX_N + 1)).div_ceil(items as usize));
        let m = movement(items, MAX_N, names, 1);
        let mut join_ratios = Vec::new();
        let mut leave_ratios = Vec::new();
        for n in 1..=MAX_N {
            let ideal = f64::from(items) / (n + 1) as f64;
            let ceil = (items as usize).div_ceil(n + 1);
            let join = m.join_sum[n] as f64 / names as f64 / ideal;
            let leave = m.leave_sum[n] as f64 / names as f64 / ideal;
            join_ratios.push(format!("{join:.2}"));
            leave_ratios.push(format!("{leave:.2}"));
            assert!(
                join <= 1.25,
                "T={items} n={n}: join moved {join:.3} x T/(n+1)"
            );
            assert!(
                m.join_max[n] <= 2 * ceil,
                "T={items} n={n}: a join moved {} > 2 x {ceil}",
                m.join_max[n]
            );
            assert!(
                m.leave_max[n] <= 2 * ceil,
                "T={items} n={n}: a leave moved {} > 2 x {ceil}",
                m.leave_max[n]
            );
            assert!(
                leave <= 2.5,
                "T={items} n={n}: leave moved {leave:.3} x T/(n+1)"
            );
            join_total += m.join_sum[n];
            leave_total += m.leave_sum[n];
            ideal_total += ideal * names as f64;
        }
        eprintln!(
            "consistent T={items}, {names} names, moved/(T/(n+1)) for n=1..={MAX_N}: \
             join [{}], leave [{}]",
            join_ratios.join(" "),
            leave_ratios.join(" ")
        );
    }
    let (join, leave) = (
        join_total as f64 / ideal_total,
        leave_total as f64 / ideal_total,
    );
    eprintln!("consistent overall: join {join:.3}, leave {leave:.3} x T/(n+1)");
    assert!(join <= 1.05, "{join:.3}");
    assert!(leave <= 2.0, "{leave:.3}");
}

/// The same with more items: `T = 1000` up to 12 instances.
#[test]
fn consistent_join_and_leave_with_many_items() {
    let m = movement(1000, 12, 30, 2);
    let mut line = Vec::new();
    for n in 1..=12 {
        let ideal = 1000.0 / (n + 1) as f64;
        let ceil = 1000usize.div_ceil(n + 1);
        let join = m.join_sum[n] as f64 / 30.0 / ideal;
        let leave = m.leave_sum[n] as f64 / 30.0 / ideal;
        line.push(format!("{join:.2}/{leave:.2}"));
        assert!(join <= 1.25, "n={n}: {join:.3}");
        assert!(m.join_max[n] <= ceil && m.leave_max[n] <= 2 * ceil, "n={n}");
    }
    eprintln!(
        "consistent T=1000 join/leave per n=1..=12: {}",
        line.join(" ")
    );
}

/// A join to one instance: the newcomer takes exactly its share and nothing else
/// moves (there is no other instance to rebalance).
#[test]
fn consistent_second_instance_takes_only_its_share() {
    for t in 0..60u32 {
        let one = [instance("a", 1)];
        let two = [instance("a", 1), instance("b", 1)];
        let before = Strategy::Consistent.assign("solo", t, &one);
        let after = Strategy::Consistent.assign("solo", t, &two);
        assert_eq!(before["a"], (0..t).collect::<Vec<_>>());
        assert!(after["a"].iter().all(|i| before["a"].contains(i)));
        let b = after["b"].len() as u32;
        assert!(b == t / 2 || b == t.div_ceil(2));
    }
}
