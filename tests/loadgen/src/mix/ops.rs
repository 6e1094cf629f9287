//! The operations of the mix, their weights (`--mix op=weight,...`) and the
//! small random source that picks them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One kind of request the mix sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `POST /products` (command-service).
    CreateProduct,
    /// `POST /products/{id}/change-price`.
    ChangePrice,
    /// `POST /products/{id}/rename`.
    RenameProduct,
    /// `POST /orders`: 1 to 3 lines of known products.
    PlaceOrder,
    /// `POST /orders/{id}/lines` on a placed order.
    AddLine,
    /// `POST /orders/{id}/confirm` on a placed order.
    ConfirmOrder,
    /// `POST /orders/{id}/cancel` on a placed or confirmed order.
    CancelOrder,
    /// `GET /orders/{id}` (query-service), served from its caches.
    GetOrder,
    /// `GET /orders/{id}` with `Cache-Control: no-cache`: read from a replica.
    GetOrderUncached,
    /// `GET /customers/{id}/orders`: a customer's order history.
    CustomerOrders,
    /// `GET /products/{id}`.
    GetProduct,
    /// `GET /products?limit=20&after=...`: a page of the catalog.
    ListProducts,
}

/// Whether an operation goes to command-service or query-service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Command,
    Read,
}

impl Op {
    /// Every operation, commands first.
    pub const ALL: [Op; 12] = [
        Op::CreateProduct,
        Op::ChangePrice,
        Op::RenameProduct,
        Op::PlaceOrder,
        Op::AddLine,
        Op::ConfirmOrder,
        Op::CancelOrder,
        Op::GetOrder,
        Op::GetOrderUncached,
        Op::CustomerOrders,
        Op::GetProduct,
        Op::ListProducts,
    ];

    /// The name used in `--mix`, the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateProduct => "create_product",
            Op::ChangePrice => "change_price",
            Op::RenameProduct => "rename_product",
            Op::PlaceOrder => "place_order",
            Op::AddLine => "add_line",
            Op::ConfirmOrder => "confirm_order",
            Op::CancelOrder => "cancel_order",
            Op::GetOrder => "get_order",
            Op::GetOrderUncached => "get_order_uncached",
            Op::CustomerOrders => "customer_orders",
            Op::GetProduct => "get_product",
            Op::ListProducts => "list_products",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn kind(self) -> OpKind {
        match self {
            Op::CreateProduct
            | Op::ChangePrice
            | Op::RenameProduct
            | Op::PlaceOrder
            | Op::AddLine
            | Op::ConfirmOrder
            | Op::CancelOrder => OpKind::Command,
            Op::GetOrder
            | Op::GetOrderUncached
            | Op::CustomerOrders
            | Op::GetProduct
            | Op::ListProducts => OpKind::Read,
        }
    }

    pub fn is_command(self) -> bool {
        self.kind() == OpKind::Command
    }

    /// Default weight, out of 100: 30 % commands, 70 % reads. Orders are
    /// placed more often than they are confirmed or cancelled, so the pool
    /// of placed orders grows during a run instead of running dry.
    pub fn default_weight(self) -> u32 {
        match self {
            Op::CreateProduct => 2,
            Op::ChangePrice => 4,
            Op::RenameProduct => 2,
            Op::PlaceOrder => 10,
            Op::AddLine => 4,
            Op::ConfirmOrder => 6,
            Op::CancelOrder => 2,
            Op::GetOrder => 30,
            Op::GetOrderUncached => 15,
            Op::CustomerOrders => 10,
            Op::GetProduct => 10,
            Op::ListProducts => 5,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a `--mix` specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixSpecError {
    #[error("`{0}` is not `op=weight`")]
    NotAPair(String),
    #[error("unknown operation `{name}` (known: {known})")]
    UnknownOp { name: String, known: String },
    #[error("the weight of `{op}` is not a non-negative integer: `{weight}`")]
    BadWeight { op: String, weight: String },
    #[error("`{0}` is given twice")]
    Duplicate(String),
    #[error("every weight is zero: the mix has nothing to send")]
    Empty,
}

/// Weighted operations. Weights are relative (they need not add up to 100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Operations with a weight above zero, in [`Op::ALL`] order.
    weights: Vec<(Op, u32)>,
    total: u64,
}

impl Default for Mix {
    fn default() -> Self {
        let weights: Vec<(Op, u32)> = Op::ALL
            .into_iter()
            .map(|op| (op, op.default_weight()))
            .collect();
        let total = weights.iter().map(|&(_, w)| u64::from(w)).sum();
        Self { weights, total }
    }
}

impl Mix {
    /// A mix of these weights (zero weights dropped).
    pub fn from_weights(
        weights: impl IntoIterator<Item = (Op, u32)>,
    ) -> Result<Self, MixSpecError> {
        let mut weights: Vec<(Op, u32)> = weights.into_iter().filter(|&(_, w)| w > 0).collect();
        weights.sort_by_key(|&(op, _)| Op::ALL.iter().position(|&o| o == op));
        let total = weights.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return Err(MixSpecError::Empty);
        }
        Ok(Self { weights, total })
    }

    /// Parses `op=weight,op=weight,...`. The specification is the whole mix:
    /// an operation it does not name is not sent.
    pub fn parse(spec: &str) -> Result<Self, MixSpecError> {
        let mut seen: Vec<Op> = Vec::new();
        let mut weights = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| MixSpecError::NotAPair(item.to_owned()))?;
            let (name, weight) = (name.trim(), weight.trim());
            let op = Op::from_name(name).ok_or_else(|| MixSpecError::UnknownOp {
                name: name.to_owned(),
                known: Op::ALL.map(Op::name).join(", "),
            })?;
            let weight: u32 = weight.parse().map_err(|_| MixSpecError::BadWeight {
                op: name.to_owned(),
                weight: weight.to_owned(),
            })?;
            if seen.contains(&op) {
                return Err(MixSpecError::Duplicate(name.to_owned()));
            }
            seen.push(op);
            weights.push((op, weight));
        }
        Self::from_weights(weights)
    }

    /// The mix's operations in a fixed order that follows the weights
    /// exactly (see [`Sequence`]).
    pub fn sequence(&self) -> Sequence {
        Sequence {
            weights: self
                .weights
                .iter()
                .map(|&(op, w)| (op, i64::from(w)))
                .collect(),
            current: vec![0; self.weights.len()],
            total: self.total as i64,
        }
    }

    /// Share of the commands in the mix, 0 to 1.
    pub fn command_share(&self) -> f64 {
        let commands: u64 = self
            .weights
            .iter()
            .filter(|(op, _)| op.is_command())
            .map(|&(_, w)| u64::from(w))
            .sum();
        commands as f64 / self.total as f64
    }

    /// The operations sent, with their weights.
    pub fn ops(&self) -> impl Iterator<Item = (Op, u32)> + '_ {
        self.weights.iter().copied()
    }

    /// Operation name → weight, for reports.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.weights
            .iter()
            .map(|&(op, w)| (op.name().to_owned(), w))
            .collect()
    }

    /// The `--mix` specification of this mix.
    pub fn spec(&self) -> String {
        self.weights
            .iter()
            .map(|&(op, w)| format!("{op}={w}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Smooth weighted round robin: in every `total` consecutive operations each
/// one appears exactly `weight` times, spread out evenly. A short run gets
/// the mix's proportions (and every operation of weight ≥ 1 per 100 at the
/// default weights), which random draws would only approach.
#[derive(Debug, Clone)]
pub struct Sequence {
    weights: Vec<(Op, i64)>,
    current: Vec<i64>,
    total: i64,
}

impl Sequence {
    pub fn next_op(&mut self) -> Op {
        let mut best = 0;
        for (i, &(_, weight)) in self.weights.iter().enumerate() {
            self.current[i] += weight;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        self.weights[best].0
    }
}

/// SplitMix64: a fast, seedable generator, plenty for picking operations
/// and targets (nothing here needs cryptographic randomness).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from a fresh random UUID.
    pub fn from_entropy() -> Self {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        Self(high ^ low.rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_is_30_percent_commands() {
        let mix = Mix::default();
        assert!((mix.command_share() - 0.3).abs() < 1e-9);
        assert_eq!(mix.weights().values().sum::<u32>(), 100);
        assert_eq!(mix.ops().count(), Op::ALL.len());
    }

    #[test]
    fn a_spec_is_the_whole_mix() {
        let mix = Mix::parse("place_order=3, get_order=1,confirm_order=0").unwrap();
        assert_eq!(
            mix.ops().collect::<Vec<_>>(),
            vec![(Op::PlaceOrder, 3), (Op::GetOrder, 1)]
        );
        assert!((mix.command_share() - 0.75).abs() < 1e-9);
        assert_eq!(mix.spec(), "place_order=3,get_order=1");
        assert_eq!(Mix::parse(&mix.spec()).unwrap(), mix);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        assert_eq!(
            Mix::parse("get_order"),
            Err(MixSpecError::NotAPair("get_order".into()))
        );
        assert!(matches!(
            Mix::parse("get_orders=1"),
            Err(MixSpecError::UnknownOp { name, known }) if name == "get_orders" && known.contains("get_order_uncached")
        ));
        assert!(matches!(
            Mix::parse("get_order=-1"),
            Err(MixSpecError::BadWeight { .. })
        ));
        assert!(matches!(
            Mix::parse("get_order=1.5"),
            Err(MixSpecError::BadWeight { .. })
        ));
        assert_eq!(
            Mix::parse("get_order=1,get_order=2"),
            Err(MixSpecError::Duplicate("get_order".into()))
        );
        assert_eq!(Mix::parse("get_order=0"), Err(MixSpecError::Empty));
        assert_eq!(Mix::parse(""), Err(MixSpecError::Empty));
    }

    #[test]
    fn the_sequence_follows_the_weights_exactly_and_evenly() {
        let mix = Mix::parse("place_order=1,get_order=3").unwrap();
        let mut sequence = mix.sequence();
        let ops: Vec<Op> = (0..8).map(|_| sequence.next_op()).collect();
        use Op::{GetOrder as G, PlaceOrder as P};
        assert_eq!(ops, vec![G, P, G, G, G, P, G, G]);
        let mut sequence = Mix::default().sequence();
        let mut counts: BTreeMap<Op, u32> = BTreeMap::new();
        for _ in 0..100 {
            *counts.entry(sequence.next_op()).or_default() += 1;
        }
        for op in Op::ALL {
            assert_eq!(counts[&op], op.default_weight(), "{op}");
        }
        // Spread out: the 2 creates of each 100 are not next to each other.
        let mut sequence = Mix::default().sequence();
        let at: Vec<usize> = (0..100)
            .filter(|_| sequence.next_op() == Op::CreateProduct)
            .collect();
        assert!(at[1] - at[0] >= 30, "{at:?}");
    }

    #[test]
    fn names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
            assert_eq!(
                serde_json::to_string(&op).unwrap(),
                format!("\"{}\"", op.name())
            );
        }
    }

    #[test]
    fn the_generator_is_uniform_enough() {
        let mut rng = Rng::new(1);
        let mean = (0..10_000).map(|_| rng.unit()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert_eq!(rng.below(0), 0);
    }
}
