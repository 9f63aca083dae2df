//! Merging the replies of several shards into the one reply a single server holding all the
//! rows would give, pure: what the statement asks for ([`MergeSpec`], made by
//! `sql::fanout`), the client's RowDescription, and [`Merger`], which takes the shards' rows
//! and gives the client's — concatenated (streamed), sorted (each shard's rows arrive sorted,
//! the merge keeps Postgres's order), made distinct, grouped with aggregates and HAVING, then
//! OFFSET and LIMIT. What it holds is bounded by a byte budget.

pub mod aggregate;
pub mod value;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::sqlstate::SqlState;
use aggregate::{AggSpec, Finished, State};
use value::{Out, Value};

/// Why a merge cannot give its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MergeError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error(
        "merging this statement's rows from the shards needs more than max_merge_bytes ({0} bytes): \
         add a shard key, a LIMIT, or a narrower filter"
    )]
    Budget(usize),
}

impl MergeError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            MergeError::Unsupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            MergeError::Malformed(_) => SqlState::PROTOCOL_VIOLATION,
            MergeError::OutOfRange(_) => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            MergeError::Budget(_) => SqlState::CONFIGURATION_LIMIT_EXCEEDED,
        }
    }
}

/// A column of the shards' rows: its type and whether it arrives in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnType {
    pub oid: u32,
    pub binary: bool,
}

/// Where a value of the merged row comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A column of the shards' rows (a group key, when grouping).
    Shard(usize),
    /// The i-th aggregate.
    Agg(usize),
    /// A column the shards return, by name (resolved when the shards describe their rows).
    Named(String),
}

/// One ORDER BY key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub item: Item,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A comparison operator of HAVING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// An operand of a HAVING comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Item(Item),
    /// A literal number (as text), string or boolean.
    Number(String),
    Text(String),
    Bool(bool),
    Null,
}

/// A HAVING condition over group keys and aggregates (three-valued, as SQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Having {
    And(Box<Having>, Box<Having>),
    Or(Box<Having>, Box<Having>),
    Not(Box<Having>),
    Cmp(Operand, CmpOp, Operand),
    IsNull(Operand, bool),
}

/// Grouping: the shards group by `keys` (and by `distinct` when there is a count(DISTINCT));
/// the merge groups again and combines the partial aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// How many columns the shards return.
    pub columns: usize,
    pub keys: Vec<usize>,
    pub distinct: Option<usize>,
    pub aggs: Vec<AggSpec>,
    pub having: Option<Having>,
}

/// The client's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outputs {
    /// The shards' columns but the last `hidden` (sort keys the client did not select).
    Leading { hidden: usize },
    /// Each from an item (grouping).
    Items(Vec<Item>),
}

/// What one statement's merge does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSpec {
    pub outputs: Outputs,
    pub grouping: Option<Grouping>,
    pub distinct: bool,
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}

impl MergeSpec {
    /// The result formats to ask the shards for, given the client's (a Bind's codes): the
    /// client's own for columns passed through to it, text for the rest.
    pub fn shard_formats(&self, client: &[i16]) -> Vec<i16> {
        let of = |j: usize| match client {
            [] => 0,
            [one] => *one,
            many => many.get(j).copied().unwrap_or(0),
        };
        match (&self.outputs, &self.grouping) {
            (Outputs::Leading { hidden }, _) => match client {
                [] | [0] => Vec::new(),
                [one] if *hidden == 0 => vec![*one],
                // One code would make the hidden columns binary too: the merge reads binary,
                // but per-column codes must count every column.
                [_] => Vec::from(client),
                many => many
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, *hidden))
                    .collect(),
            },
            (Outputs::Items(items), Some(grouping)) => {
                let mut formats = vec![0i16; grouping.columns];
                for (j, item) in items.iter().enumerate() {
                    let column = match item {
                        Item::Shard(i) => Some(*i),
                        Item::Agg(a) => grouping.aggs.get(*a).and_then(|agg| {
                            matches!(agg.func, aggregate::Func::Min | aggregate::Func::Max)
                                .then_some(agg.column)
                        }),
                        Item::Named(_) => None,
                    };
                    if let Some(slot) = column.and_then(|c| formats.get_mut(c)) {
                        *slot = of(j);
                    }
                }
                if formats.iter().all(|f| *f == 0) {
                    Vec::new()
                } else {
                    formats
                }
            }
            (Outputs::Items(_), None) => Vec::new(),
        }
    }
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub table: u32,
    pub column: i16,
    pub oid: u32,
    pub len: i16,
    pub typmod: i32,
    pub format: i16,
}

/// The fields of a RowDescription body.
pub fn parse_fields(body: &[u8]) -> Option<Vec<Field>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut fields = Vec::with_capacity(count.into());
    for _ in 0..count {
        let end = at + crate::protocol::nul_at(body.get(at..)?)?;
        let name = body[at..end].to_vec();
        let rest = body.get(end + 1..end + 19)?;
        let u32_at =
            |i: usize| u32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let i16_at = |i: usize| i16::from_be_bytes([rest[i], rest[i + 1]]);
        fields.push(Field {
            name,
            table: u32_at(0),
            column: i16_at(4),
            oid: u32_at(6),
            len: i16_at(10),
            typmod: u32_at(12) as i32,
            format: i16_at(16),
        });
        at = end + 19;
    }
    Some(fields)
}

/// A whole RowDescription message.
pub fn row_description(fields: &[Field], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(crate::protocol::backend::ROW_DESCRIPTION_TAG);
    out.put_u32(0);
    out.put_u16(fields.len() as u16);
    for f in fields {
        out.extend_from_slice(&f.name);
        out.put_u8(0);
        out.put_u32(f.table);
        out.put_i16(f.column);
        out.put_u32(f.oid);
        out.put_i16(f.len);
        out.put_i32(f.typmod);
        out.put_i16(f.format);
    }
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// A DataRow body with its cells located.
#[derive(Debug, Clone)]
pub struct Row {
    body: Bytes,
    cells: smallvec::SmallVec<[(u32, i32); 8]>,
}

impl Row {
    /// Reads a DataRow body.
    pub fn parse(body: Bytes) -> Result<Row, MergeError> {
        let bad = || MergeError::Malformed("a shard sent a malformed DataRow".into());
        let count = u16::from_be_bytes(
            body.get(..2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let mut cells = smallvec::SmallVec::with_capacity(count.into());
        let mut at = 2usize;
        for _ in 0..count {
            let len = i32::from_be_bytes(
                body.get(at..at + 4)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            );
            at += 4;
            cells.push((at as u32, len));
            if len > 0 {
                at += len as usize;
            }
        }
        if at > body.len() {
            return Err(bad());
        }
        Ok(Row { body, cells })
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The raw value of column `i` (None: NULL or no such column).
    pub fn cell(&self, i: usize) -> Option<&[u8]> {
        let (at, len) = *self.cells.get(i)?;
        (len >= 0).then(|| &self.body[at as usize..at as usize + len as usize])
    }

    /// The raw value of column `i` sharing the row's buffer.
    pub fn cell_bytes(&self, i: usize) -> Option<Bytes> {
        let (at, len) = *self.cells.get(i)?;
        (len >= 0).then(|| self.body.slice(at as usize..at as usize + len as usize))
    }

    /// The decoded value of column `i` (None: NULL).
    pub fn value(&self, i: usize, types: &[ColumnType]) -> Result<Option<Value<'_>>, MergeError> {
        let Some(raw) = self.cell(i) else {
            return Ok(None);
        };
        let t = types.get(i).ok_or_else(|| {
            MergeError::Malformed("a shard sent more columns than it described".into())
        })?;
        value::decode(t.oid, t.binary, raw).map(Some)
    }

    fn bytes(&self) -> usize {
        self.body.len() + 16 * self.cells.len() + 64
    }
}

/// A value of the merged row: raw (in the client's format) or computed.
#[derive(Clone)]
enum Cell {
    Null,
    Raw(Bytes, ColumnType),
    Computed(Value<'static>, Out),
}

impl Cell {
    fn value(&self) -> Result<Option<Value<'_>>, MergeError> {
        Ok(match self {
            Cell::Null => None,
            Cell::Raw(raw, t) => Some(value::decode(t.oid, t.binary, raw)?),
            Cell::Computed(v, _) => Some(v.clone()),
        })
    }
}

/// Postgres's order of two (possibly NULL) values under one sort key.
fn key_order(a: Option<&Value<'_>>, b: Option<&Value<'_>>, key: &SortKey) -> Ordering {
    let order = match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => {
            return if key.nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (Some(_), None) => {
            return if key.nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (Some(a), Some(b)) => a.order(b),
    };
    if key.descending {
        order.reverse()
    } else {
        order
    }
}

mod merger;
pub use merger::Merger;
