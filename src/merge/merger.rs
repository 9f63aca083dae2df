//! [`Merger`]: the shards' rows in, the client's rows out, as the statement's [`MergeSpec`]
//! says — streamed when nothing needs the whole set, held (within the budget) when DISTINCT
//! or grouping does. Rows of an ORDER BY without grouping are pushed in order: the caller
//! merges the shards' sorted streams k-way with [`Merger::order`].

use super::*;

/// A group of rows with equal keys.
struct Group {
    /// The first row of the group (its key values, as the client will see them).
    first: Option<Row>,
    states: Vec<State>,
    /// The distinct values of a count(DISTINCT).
    distinct: HashSet<Vec<u8>>,
}

enum Mode {
    /// Rows go straight out.
    Stream,
    /// Rows go straight out unless seen before.
    Distinct(HashSet<Vec<u8>>),
    Grouped {
        index: HashMap<Vec<u8>, usize>,
        groups: Vec<Group>,
    },
}

/// Merges one statement's shard replies.
pub struct Merger {
    spec: MergeSpec,
    /// The shards' columns.
    types: Vec<ColumnType>,
    /// The client's columns: how each is written (binary or text) and, for leading
    /// outputs, how many.
    client_binary: Vec<bool>,
    budget: usize,
    used: usize,
    mode: Mode,
    /// Rows given to the client, and rows skipped for OFFSET.
    sent: u64,
    skipped: u64,
}

impl Merger {
    /// A merger for shards that describe their rows as `fields`, for a client that asked
    /// for its columns in `formats` (a Bind's result format codes; none: text). Returns the
    /// client's RowDescription fields too.
    pub fn new(
        mut spec: MergeSpec,
        fields: &[Field],
        formats: &[i16],
        budget: usize,
    ) -> Result<(Merger, Vec<Field>), MergeError> {
        let types: Vec<ColumnType> = fields
            .iter()
            .map(|f| ColumnType {
                oid: f.oid,
                binary: f.format == 1,
            })
            .collect();
        resolve_names(&mut spec, fields)?;
        let client = client_fields(&spec, fields)?;
        let client_binary: Vec<bool> = (0..client.len())
            .map(|i| match formats {
                [] => false,
                [one] => *one == 1,
                many => many.get(i).is_some_and(|f| *f == 1),
            })
            .collect();
        let client = client
            .into_iter()
            .zip(&client_binary)
            .map(|(f, binary)| Field {
                format: i16::from(*binary),
                ..f
            })
            .collect();
        let merger = Merger {
            types,
            client_binary,
            budget,
            used: 0,
            mode: Mode::Stream,
            sent: 0,
            skipped: 0,
            spec,
        };
        merger.check_types()?;
        let mode = match (&merger.spec.grouping, merger.spec.distinct) {
            (Some(_), _) => Mode::Grouped {
                index: HashMap::new(),
                groups: Vec::new(),
            },
            (None, true) => Mode::Distinct(HashSet::new()),
            (None, false) => Mode::Stream,
        };
        Ok((Merger { mode, ..merger }, client))
    }

    /// Whether text values are compared (the database's collation must then be C).
    pub fn compares_text(&self) -> bool {
        let shard_oid = |item: &Item| match item {
            Item::Shard(i) => self.types.get(*i).map(|t| t.oid),
            Item::Agg(a) => self
                .spec
                .grouping
                .as_ref()
                .and_then(|g| g.aggs.get(*a))
                .and_then(|agg| self.types.get(agg.column))
                .map(|t| t.oid),
            Item::Named(_) => None,
        };
        let sorts = self
            .spec
            .order
            .iter()
            .any(|k| shard_oid(&k.item).is_some_and(value::collatable));
        let extremes = self.spec.grouping.as_ref().is_some_and(|g| {
            g.aggs.iter().any(|a| {
                matches!(a.func, aggregate::Func::Min | aggregate::Func::Max)
                    && self
                        .types
                        .get(a.column)
                        .is_some_and(|t| value::collatable(t.oid))
            })
        });
        sorts || extremes
    }

    /// Every value the merge must read is of a type it reads.
    fn check_types(&self) -> Result<(), MergeError> {
        let need = |i: usize| -> Result<(), MergeError> {
            let t = self.types.get(i).ok_or_else(|| {
                MergeError::Malformed("a shard described fewer columns than asked".into())
            })?;
            if value::supported(t.oid) {
                Ok(())
            } else {
                Err(MergeError::Unsupported(value::unsupported_type(t.oid)))
            }
        };
        for key in &self.spec.order {
            if let Item::Shard(i) = key.item {
                need(i)?;
            }
        }
        if let Some(g) = &self.spec.grouping {
            for agg in &g.aggs {
                if agg.func != aggregate::Func::CountDistinct {
                    need(agg.column)?;
                }
            }
        }
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> Result<(), MergeError> {
        self.used += bytes;
        if self.used > self.budget {
            return Err(MergeError::Budget(self.budget));
        }
        Ok(())
    }

    /// Whether the client has all the rows it will get (LIMIT reached while streaming).
    pub fn full(&self) -> bool {
        matches!(self.mode, Mode::Stream | Mode::Distinct(_))
            && self.spec.limit.is_some_and(|l| self.sent >= l)
    }

    /// Takes one DataRow body from a shard; rows that can go out now are appended to `out`
    /// as DataRow messages.
    pub fn push(&mut self, body: Bytes, out: &mut BytesMut) -> Result<(), MergeError> {
        let row = self.row(body)?;
        self.push_row(row, out)
    }

    /// A DataRow body read as a row of the shards' columns.
    pub fn row(&self, body: Bytes) -> Result<Row, MergeError> {
        let row = Row::parse(body)?;
        if row.len() != self.types.len() {
            return Err(MergeError::Malformed(
                "a shard sent a row that does not match its description".into(),
            ));
        }
        Ok(row)
    }

    /// Postgres's order of two rows under the statement's ORDER BY.
    pub fn order(&self, a: &Row, b: &Row) -> Result<Ordering, MergeError> {
        compare_rows(a, b, &self.spec.order, &self.types)
    }

    /// Takes one row (see [`Merger::push`]).
    pub fn push_row(&mut self, row: Row, out: &mut BytesMut) -> Result<(), MergeError> {
        let leading = self.leading();
        match &mut self.mode {
            Mode::Stream => {
                self.emit_leading(&row, out);
                Ok(())
            }
            Mode::Distinct(seen) => {
                let mut key = Vec::new();
                canonical_leading(&row, &self.types, leading, &mut key)?;
                let size = key.len() + 32;
                if seen.insert(key) {
                    self.charge(size)?;
                    self.emit_leading(&row, out);
                }
                Ok(())
            }
            Mode::Grouped { .. } => self.group(row),
        }
    }

    /// The number of leading output columns (leading mode).
    fn leading(&self) -> usize {
        match &self.spec.outputs {
            Outputs::Leading { hidden } => self.types.len().saturating_sub(*hidden),
            Outputs::Items(items) => items.len(),
        }
    }

    /// A row of leading columns goes out, after OFFSET and within LIMIT.
    fn emit_leading(&mut self, row: &Row, out: &mut BytesMut) {
        if !self.admit() {
            return;
        }
        let n = self.leading();
        if n == row.len() {
            put_data_row(out, &row.body);
            return;
        }
        let cells: Vec<Option<&[u8]>> = (0..n).map(|i| row.cell(i)).collect();
        write_row(out, cells.iter().map(|c| c.map(WriteCell::Raw)));
    }

    /// Counts a row about to go out: false while OFFSET skips or once LIMIT is reached.
    fn admit(&mut self) -> bool {
        if self.skipped < self.spec.offset {
            self.skipped += 1;
            return false;
        }
        if self.spec.limit.is_some_and(|l| self.sent >= l) {
            return false;
        }
        self.sent += 1;
        true
    }

    fn group(&mut self, row: Row) -> Result<(), MergeError> {
        let Some(grouping) = &self.spec.grouping else {
            return Ok(());
        };
        let mut key = Vec::new();
        for &k in &grouping.keys {
            canonical_cell(&row, k, &self.types, &mut key)?;
        }
        let Mode::Grouped { index, groups } = &mut self.mode else {
            return Ok(());
        };
        let mut charge = 0;
        let at = match index.get(&key) {
            Some(&at) => at,
            None => {
                charge += key.len() + row.bytes() + 48 * grouping.aggs.len() + 64;
                groups.push(Group {
                    first: Some(row.clone()),
                    states: grouping.aggs.iter().map(AggSpec::empty).collect(),
                    distinct: HashSet::new(),
                });
                index.insert(key, groups.len() - 1);
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        for (agg, state) in grouping.aggs.iter().zip(&mut group.states) {
            agg.fold(state, &row, &self.types)?;
        }
        if let Some(d) = grouping.distinct {
            if row.cell(d).is_some() {
                let mut value = Vec::new();
                canonical_cell(&row, d, &self.types, &mut value)?;
                charge += value.len() + 32;
                group.distinct.insert(value);
            }
        }
        self.charge(charge)
    }

    /// Every shard is done: the held rows go out. Returns the number of rows the client got.
    pub fn finish(mut self, out: &mut BytesMut) -> Result<u64, MergeError> {
        match std::mem::replace(&mut self.mode, Mode::Stream) {
            Mode::Stream | Mode::Distinct(_) => {}
            Mode::Grouped { groups, .. } => self.finish_groups(groups, out)?,
        }
        Ok(self.sent)
    }

    fn finish_groups(
        &mut self,
        mut groups: Vec<Group>,
        out: &mut BytesMut,
    ) -> Result<(), MergeError> {
        let Some(grouping) = self.spec.grouping.clone() else {
            return Ok(());
        };
        if groups.is_empty() && grouping.keys.is_empty() {
            // An aggregate without GROUP BY has one row even over no rows.
            groups.push(Group {
                first: None,
                states: grouping.aggs.iter().map(AggSpec::empty).collect(),
                distinct: HashSet::new(),
            });
        }
        let Outputs::Items(outputs) = self.spec.outputs.clone() else {
            return Ok(());
        };
        // Each group's output cells and sort cells.
        let mut rows: Vec<(Vec<Cell>, Vec<Cell>)> = Vec::with_capacity(groups.len());
        for group in &groups {
            let cell = |item: &Item| self.item_cell(item, group, &grouping);
            if let Some(having) = &grouping.having {
                if eval(having, &|item| cell(item))? != Some(true) {
                    continue;
                }
            }
            let shown = outputs.iter().map(&cell).collect::<Result<Vec<_>, _>>()?;
            let sort = self
                .spec
                .order
                .iter()
                .map(|k| cell(&k.item))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push((shown, sort));
        }
        if !self.spec.order.is_empty() {
            let mut failed = None;
            let keys = &self.spec.order;
            rows.sort_by(|(_, a), (_, b)| {
                compare_cells(a, b, keys).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    Ordering::Equal
                })
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let mut seen = HashSet::new();
        for (shown, _) in rows {
            if self.spec.distinct {
                let mut key = Vec::new();
                for cell in &shown {
                    canonical_of(cell, &mut key)?;
                }
                if !seen.insert(key) {
                    continue;
                }
            }
            if !self.admit() {
                continue;
            }
            let binary = &self.client_binary;
            write_row(
                out,
                shown.iter().enumerate().map(|(i, cell)| match cell {
                    Cell::Null => None,
                    Cell::Raw(raw, _) => Some(WriteCell::Raw(raw)),
                    Cell::Computed(v, t) => {
                        Some(WriteCell::Computed(v, *t, binary.get(i) == Some(&true)))
                    }
                }),
            );
        }
        Ok(())
    }

    /// The value of `item` for a finished group.
    fn item_cell(
        &self,
        item: &Item,
        group: &Group,
        grouping: &Grouping,
    ) -> Result<Cell, MergeError> {
        Ok(match item {
            Item::Shard(i) => match group.first.as_ref().and_then(|r| r.cell_bytes(*i)) {
                Some(raw) => Cell::Raw(raw, self.types[*i]),
                None => Cell::Null,
            },
            Item::Agg(a) => {
                let agg = &grouping.aggs[*a];
                let oid = self.types.get(agg.column).map_or(0, |t| t.oid);
                match aggregate::finish(&group.states[*a], group.distinct.len(), oid)? {
                    Finished::Null => Cell::Null,
                    Finished::Raw(raw) => Cell::Raw(raw, self.types[agg.column]),
                    Finished::Computed(v, t) => Cell::Computed(v, t),
                }
            }
            Item::Named(name) => {
                return Err(MergeError::Malformed(format!(
                    "column \"{name}\" was not resolved"
                )))
            }
        })
    }
}

/// Resolves ORDER BY names against the shards' column names.
fn resolve_names(spec: &mut MergeSpec, fields: &[Field]) -> Result<(), MergeError> {
    for key in &mut spec.order {
        if let Item::Named(name) = &key.item {
            let matches: Vec<usize> = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name == name.as_bytes())
                .map(|(i, _)| i)
                .collect();
            key.item = match matches[..] {
                [one] => Item::Shard(one),
                [] => {
                    return Err(MergeError::Unsupported(format!(
                    "ORDER BY \"{name}\" names no column of the result: order by a selected column"
                )))
                }
                _ => {
                    return Err(MergeError::Unsupported(format!(
                        "ORDER BY \"{name}\" is ambiguous in the result"
                    )))
                }
            };
        }
    }
    Ok(())
}

/// The client's RowDescription fields (formats still the shards').
fn client_fields(spec: &MergeSpec, fields: &[Field]) -> Result<Vec<Field>, MergeError> {
    let missing = || MergeError::Malformed("a shard described fewer columns than asked".into());
    match &spec.outputs {
        Outputs::Leading { hidden } => Ok(fields[..fields.len().saturating_sub(*hidden)].to_vec()),
        Outputs::Items(items) => items
            .iter()
            .map(|item| match item {
                Item::Shard(i) => fields.get(*i).cloned().ok_or_else(missing),
                Item::Agg(a) => {
                    let agg = spec
                        .grouping
                        .as_ref()
                        .and_then(|g| g.aggs.get(*a))
                        .ok_or_else(missing)?;
                    let partial = fields.get(agg.column).ok_or_else(missing)?;
                    let (oid, len, typmod) = match agg.func {
                        aggregate::Func::Count | aggregate::Func::CountDistinct => {
                            (value::INT8, 8, -1)
                        }
                        aggregate::Func::BoolAnd | aggregate::Func::BoolOr => (value::BOOL, 1, -1),
                        aggregate::Func::Min | aggregate::Func::Max | aggregate::Func::Sum => {
                            (partial.oid, partial.len, -1)
                        }
                        aggregate::Func::Avg => match aggregate::avg_out(partial.oid) {
                            Out::Float8 => (value::FLOAT8, 8, -1),
                            _ => (value::NUMERIC, -1, -1),
                        },
                    };
                    Ok(Field {
                        name: agg.name.as_bytes().to_vec(),
                        table: 0,
                        column: 0,
                        oid,
                        len,
                        typmod,
                        format: 0,
                    })
                }
                Item::Named(_) => Err(missing()),
            })
            .collect(),
    }
}

fn canonical_cell(
    row: &Row,
    i: usize,
    types: &[ColumnType],
    out: &mut Vec<u8>,
) -> Result<(), MergeError> {
    match row.cell(i) {
        None => out.push(0),
        Some(raw) => {
            out.push(1);
            let t = types.get(i).copied().unwrap_or(ColumnType {
                oid: 0,
                binary: false,
            });
            let start = out.len();
            if value::supported(t.oid) {
                value::decode(t.oid, t.binary, raw)?.canonical(out);
            } else {
                out.extend_from_slice(raw);
            }
            let len = (out.len() - start) as u32;
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

fn canonical_leading(
    row: &Row,
    types: &[ColumnType],
    n: usize,
    out: &mut Vec<u8>,
) -> Result<(), MergeError> {
    for i in 0..n {
        canonical_cell(row, i, types, out)?;
    }
    Ok(())
}

fn canonical_of(cell: &Cell, out: &mut Vec<u8>) -> Result<(), MergeError> {
    match cell.value() {
        Ok(None) => out.push(0),
        Ok(Some(v)) => {
            out.push(1);
            let start = out.len();
            v.canonical(out);
            let len = (out.len() - start) as u32;
            out.extend_from_slice(&len.to_be_bytes());
        }
        // A type the merge does not read: its bytes.
        Err(_) => match cell {
            Cell::Raw(raw, _) => {
                out.push(2);
                out.extend_from_slice(raw);
                out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            }
            _ => out.push(3),
        },
    }
    Ok(())
}

fn compare_rows(
    a: &Row,
    b: &Row,
    keys: &[SortKey],
    types: &[ColumnType],
) -> Result<Ordering, MergeError> {
    for key in keys {
        let Item::Shard(i) = key.item else {
            continue;
        };
        let order = key_order(
            a.value(i, types)?.as_ref(),
            b.value(i, types)?.as_ref(),
            key,
        );
        if order != Ordering::Equal {
            return Ok(order);
        }
    }
    Ok(Ordering::Equal)
}

fn compare_cells(a: &[Cell], b: &[Cell], keys: &[SortKey]) -> Result<Ordering, MergeError> {
    for ((a, b), key) in a.iter().zip(b).zip(keys) {
        let order = key_order(a.value()?.as_ref(), b.value()?.as_ref(), key);
        if order != Ordering::Equal {
            return Ok(order);
        }
    }
    Ok(Ordering::Equal)
}

/// HAVING, three-valued.
fn eval(
    h: &Having,
    cell: &dyn Fn(&Item) -> Result<Cell, MergeError>,
) -> Result<Option<bool>, MergeError> {
    Ok(match h {
        Having::And(a, b) => match (eval(a, cell)?, eval(b, cell)?) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Having::Or(a, b) => match (eval(a, cell)?, eval(b, cell)?) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Having::Not(a) => eval(a, cell)?.map(|b| !b),
        Having::IsNull(operand, negated) => {
            let is_null = operand_cell(operand, cell)?.value()?.is_none();
            Some(is_null != *negated)
        }
        Having::Cmp(a, op, b) => {
            let (a, b) = (operand_cell(a, cell)?, operand_cell(b, cell)?);
            let (Some(a), Some(b)) = (a.value()?, b.value()?) else {
                return Ok(None);
            };
            let comparable = matches!(
                (&a, &b),
                (
                    Value::Int(_) | Value::Numeric(_) | Value::Float(_),
                    Value::Int(_) | Value::Numeric(_) | Value::Float(_)
                ) | (Value::Bool(_), Value::Bool(_))
                    | (Value::Bytes(_), Value::Bytes(_))
                    | (Value::Time(_), Value::Time(_))
            );
            if !comparable {
                return Err(MergeError::Unsupported(
                    "HAVING compares values of different kinds: compare an aggregate with a number"
                        .into(),
                ));
            }
            let order = a.order(&b);
            Some(match op {
                CmpOp::Eq => order.is_eq(),
                CmpOp::NotEq => order.is_ne(),
                CmpOp::Lt => order.is_lt(),
                CmpOp::LtEq => order.is_le(),
                CmpOp::Gt => order.is_gt(),
                CmpOp::GtEq => order.is_ge(),
            })
        }
    })
}

fn operand_cell(
    operand: &Operand,
    cell: &dyn Fn(&Item) -> Result<Cell, MergeError>,
) -> Result<Cell, MergeError> {
    Ok(match operand {
        Operand::Item(item) => cell(item)?,
        Operand::Null => Cell::Null,
        Operand::Bool(b) => Cell::Computed(Value::Bool(*b), Out::Bool),
        Operand::Number(n) => match value::parse_numeric(n) {
            Some(n) => Cell::Computed(Value::Numeric(n), Out::Numeric),
            None => {
                return Err(MergeError::Unsupported(format!(
                    "HAVING cannot read the number {n}"
                )))
            }
        },
        Operand::Text(t) => Cell::Raw(
            Bytes::from(t.clone().into_bytes()),
            ColumnType {
                oid: value::TEXT,
                binary: false,
            },
        ),
    })
}

enum WriteCell<'a> {
    Raw(&'a [u8]),
    Computed(&'a Value<'static>, Out, bool),
}

fn put_data_row(out: &mut BytesMut, body: &[u8]) {
    out.put_u8(crate::protocol::backend::DATA_ROW_TAG);
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(body);
}

fn write_row<'a>(out: &mut BytesMut, cells: impl ExactSizeIterator<Item = Option<WriteCell<'a>>>) {
    let start = out.len();
    out.put_u8(crate::protocol::backend::DATA_ROW_TAG);
    out.put_u32(0);
    out.put_u16(cells.len() as u16);
    for cell in cells {
        match cell {
            None => out.put_i32(-1),
            Some(WriteCell::Raw(raw)) => {
                out.put_i32(raw.len() as i32);
                out.extend_from_slice(raw);
            }
            Some(WriteCell::Computed(v, t, binary)) => {
                let at = out.len();
                out.put_i32(0);
                value::encode(v, t, binary, out);
                let len = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}
