//! The order in which a fetch round asks its queues for jobs: smooth weighted round-robin,
//! as nginx balances its upstreams, by each queue's [`QueueSpec::weight`](super::QueueSpec).
//!
//! It owns the order only; what a round does with each queue (slots, limits, rates) is
//! `fetch`'s. Why the first queue is what counts: a queue with a backlog takes every free slot
//! of a round it is asked first in, so the share of rounds a queue starts is about its share
//! of the jobs run while every queue has work.
//!
//! Deterministic rather than Sidekiq's weighted shuffle: over any sum-of-weights rounds each
//! queue starts exactly its weight's worth of them (spread out, not in a burst), so a light
//! queue waits a bounded number of rounds, and equal weights make plain round-robin.

use std::cmp::Reverse;

/// The state of the smooth weighted round-robin over one pool's active queues.
#[derive(Debug)]
pub(super) struct RoundOrder {
    weights: Vec<i64>,
    /// How far each queue is behind its share; the one furthest behind goes first.
    current: Vec<i64>,
    total: i64,
    /// The last order handed out, kept to spare an allocation per round.
    order: Vec<usize>,
}

impl RoundOrder {
    /// Weights of the queues, in their configured order; 0 counts as 1, and anything above
    /// [`MAX_WEIGHT`](super::MAX_WEIGHT) as that.
    pub(super) fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let weights: Vec<i64> = weights
            .into_iter()
            .map(|w| i64::from(w.clamp(1, super::MAX_WEIGHT)))
            .collect();
        Self {
            current: vec![0; weights.len()],
            total: weights.iter().sum(),
            order: Vec::with_capacity(weights.len()),
            weights,
        }
    }

    /// The next round's order, as indexes into the weights given to [`RoundOrder::new`].
    ///
    /// The first is smooth weighted round-robin's pick; the others follow by how far each is
    /// behind its share, so that when the first has no work the next heaviest is asked next.
    /// Ties go to the queue that comes soonest after the first, cyclically: with equal weights
    /// each round is today's round-robin, starting one queue further on.
    pub(super) fn next(&mut self) -> &[usize] {
        let n = self.weights.len();
        for (c, w) in self.current.iter_mut().zip(&self.weights) {
            *c += w;
        }
        // The lowest index among the furthest behind: `max_by_key` keeps the last maximum.
        let Some(first) = (0..n).max_by_key(|&i| (self.current[i], Reverse(i))) else {
            self.order.clear();
            return &self.order;
        };
        self.current[first] -= self.total;
        let current = &self.current;
        self.order.clear();
        self.order.extend(0..n);
        self.order
            .sort_by_key(|&i| (i != first, Reverse(current[i]), (i + n - first) % n));
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_round_robin() {
        for n in 1..=6 {
            let mut order = RoundOrder::new(vec![1; n]);
            for round in 0..(5 * n) {
                let first = round % n;
                let want: Vec<usize> = (first..n).chain(0..first).collect();
                assert_eq!(order.next(), want, "{n} queues, round {round}");
            }
            // The same with any equal weight.
            let mut heavy = RoundOrder::new(vec![7; n]);
            let mut plain = RoundOrder::new(vec![1; n]);
            for _ in 0..(3 * n) {
                assert_eq!(heavy.next(), plain.next());
            }
        }
    }

    #[test]
    fn each_queue_starts_its_weight_of_every_cycle_spread_out() {
        let weights = [6, 2, 1];
        let mut order = RoundOrder::new(weights);
        let mut firsts = Vec::new();
        for _ in 0..(9 * 4) {
            firsts.push(order.next()[0]);
        }
        for cycle in firsts.chunks(9) {
            for (q, w) in weights.iter().enumerate() {
                let starts = cycle.iter().filter(|&&f| f == q).count();
                assert_eq!(starts, *w as usize, "queue {q} in {cycle:?}");
            }
        }
        // Spread out: the heaviest never starts more than three rounds in a row here.
        assert!(
            !firsts.windows(4).any(|w| w.iter().all(|&f| f == 0)),
            "{firsts:?}"
        );
    }

    #[test]
    fn every_round_asks_every_queue_once_heaviest_behind_first() {
        let mut order = RoundOrder::new([1, 5, 3]);
        for _ in 0..20 {
            let mut round = order.next().to_vec();
            round.sort_unstable();
            assert_eq!(round, vec![0, 1, 2]);
        }
        // From rest, the heaviest starts, then the next heaviest.
        let mut fresh = RoundOrder::new([1, 5, 3]);
        assert_eq!(fresh.next(), [1, 2, 0]);
    }

    #[test]
    fn out_of_range_weights_are_clamped_and_no_queue_is_no_order() {
        let mut order = RoundOrder::new([0, 1]);
        assert_eq!(order.next(), [0, 1]);
        assert_eq!(order.next(), [1, 0]);
        let mut huge = RoundOrder::new([u32::MAX, 1]);
        let light = (0..=1000).filter(|_| huge.next()[0] == 1).count();
        assert_eq!(light, 1, "capped at 1000:1");
        assert!(RoundOrder::new([]).next().is_empty());
    }
}
