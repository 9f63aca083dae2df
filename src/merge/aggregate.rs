//! Aggregates merged from per-shard partial values, pure: counts and sums add, min and max
//! compare, bool_and/or combine, avg divides the summed sums by the summed counts exactly as
//! Postgres's numeric division does (its result scale and rounding), count(DISTINCT) counts
//! the distinct values the shards grouped by.

use bigdecimal::num_bigint::{BigInt, Sign};
use bigdecimal::{BigDecimal, Zero};
use bytes::Bytes;

use super::value::{self, Numeric, Out, Value};
use super::{ColumnType, MergeError, Row};

/// An aggregate the merge knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Count,
    Sum,
    Min,
    Max,
    /// Shards send sum and count.
    Avg,
    BoolAnd,
    BoolOr,
    /// Shards group by the value; the merge counts the distinct non-NULL values.
    CountDistinct,
}

/// One aggregate of the statement and where its partials are in a shard's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggSpec {
    pub func: Func,
    /// The partial's column (avg: the sum; count(DISTINCT): the value).
    pub column: usize,
    /// avg: the count's column.
    pub count_column: Option<usize>,
    /// The client's column name (its alias, or the function's name).
    pub name: String,
}

/// A group's running value of one aggregate.
#[derive(Debug, Clone)]
pub enum State {
    Count(i64),
    Sum(Option<Total>),
    /// The best raw value so far (in the format the client asked for).
    Best(Option<Bytes>),
    Avg(Option<Total>, i64),
    Bool(Option<bool>),
    /// Distinct values are counted in the group's set.
    Distinct,
}

/// A sum kept exactly (integers widen, numerics are exact; floats as Postgres adds them).
#[derive(Debug, Clone)]
pub enum Total {
    Int(i128),
    Numeric(Numeric),
    Float(f64),
}

impl Total {
    fn add(self, value: &Value<'_>) -> Total {
        match (self, value) {
            (Total::Int(a), Value::Int(b)) => Total::Int(a + i128::from(*b)),
            (Total::Float(a), Value::Float(b)) => Total::Float(a + b),
            (Total::Numeric(a), v) => Total::Numeric(add_numeric(a, v)),
            (Total::Int(a), v) => Total::Numeric(add_numeric(
                Numeric::Finite(BigDecimal::from(BigInt::from(a))),
                v,
            )),
            (Total::Float(a), _) => Total::Float(a),
        }
    }

    fn start(value: &Value<'_>) -> Total {
        match value {
            Value::Int(i) => Total::Int((*i).into()),
            Value::Float(f) => Total::Float(*f),
            Value::Numeric(n) => Total::Numeric(n.clone()),
            _ => Total::Int(0),
        }
    }
}

fn add_numeric(a: Numeric, v: &Value<'_>) -> Numeric {
    let b = match v {
        Value::Int(i) => Numeric::Finite((*i).into()),
        Value::Numeric(n) => n.clone(),
        _ => return a,
    };
    match (a, b) {
        (Numeric::NaN, _) | (_, Numeric::NaN) => Numeric::NaN,
        (Numeric::Infinity, Numeric::NegInfinity) | (Numeric::NegInfinity, Numeric::Infinity) => {
            Numeric::NaN
        }
        (Numeric::Infinity, _) | (_, Numeric::Infinity) => Numeric::Infinity,
        (Numeric::NegInfinity, _) | (_, Numeric::NegInfinity) => Numeric::NegInfinity,
        (Numeric::Finite(a), Numeric::Finite(b)) => Numeric::Finite(a + b),
    }
}

impl AggSpec {
    /// The state of a group with no rows yet.
    pub fn empty(&self) -> State {
        match self.func {
            Func::Count => State::Count(0),
            Func::Sum => State::Sum(None),
            Func::Min | Func::Max => State::Best(None),
            Func::Avg => State::Avg(None, 0),
            Func::BoolAnd | Func::BoolOr => State::Bool(None),
            Func::CountDistinct => State::Distinct,
        }
    }

    /// Folds one shard row's partials into `state`.
    pub fn fold(
        &self,
        state: &mut State,
        row: &Row,
        types: &[ColumnType],
    ) -> Result<(), MergeError> {
        let value = |i: usize| row.value(i, types);
        match state {
            State::Count(n) => {
                if let Some(Value::Int(c)) = value(self.column)? {
                    *n += c;
                }
            }
            State::Sum(total) => {
                if let Some(v) = value(self.column)? {
                    *total = Some(match total.take() {
                        Some(t) => t.add(&v),
                        None => Total::start(&v),
                    });
                }
            }
            State::Best(best) => {
                if let Some(new) = value(self.column)? {
                    let better = match best {
                        None => true,
                        Some(have) => {
                            let t = types[self.column];
                            let order = new.order(&value::decode(t.oid, t.binary, have)?);
                            match self.func {
                                Func::Min => order.is_lt(),
                                _ => order.is_gt(),
                            }
                        }
                    };
                    if better {
                        *best = row.cell_bytes(self.column);
                    }
                }
            }
            State::Avg(total, count) => {
                if let Some(v) = value(self.column)? {
                    *total = Some(match total.take() {
                        Some(t) => t.add(&v),
                        None => Total::start(&v),
                    });
                }
                if let Some(Value::Int(c)) = self.count_column.map(value).transpose()?.flatten() {
                    *count += c;
                }
            }
            State::Bool(b) => {
                if let Some(Value::Bool(v)) = value(self.column)? {
                    *b = Some(match (*b, self.func) {
                        (None, _) => v,
                        (Some(have), Func::BoolAnd) => have && v,
                        (Some(have), _) => have || v,
                    });
                }
            }
            State::Distinct => {}
        }
        Ok(())
    }
}

/// The finished value of an aggregate: a computed value (with how it is written), a raw value
/// passed through (min/max), or NULL.
pub enum Finished {
    Computed(Value<'static>, Out),
    Raw(Bytes),
    Null,
}

/// How a sum or average of a partial of type `oid` is written.
pub fn sum_out(oid: u32) -> Out {
    match oid {
        value::INT8 | value::INT4 | value::INT2 => Out::Int8,
        value::FLOAT4 => Out::Float4,
        value::FLOAT8 => Out::Float8,
        _ => Out::Numeric,
    }
}

pub fn avg_out(sum_oid: u32) -> Out {
    match sum_oid {
        value::FLOAT4 | value::FLOAT8 => Out::Float8,
        _ => Out::Numeric,
    }
}

/// The final value of `state` for a group with `distinct` distinct values counted.
pub fn finish(state: &State, distinct: usize, partial_oid: u32) -> Result<Finished, MergeError> {
    Ok(match state {
        State::Count(n) => Finished::Computed(Value::Int(*n), Out::Int8),
        State::Distinct => Finished::Computed(Value::Int(distinct as i64), Out::Int8),
        State::Sum(None) | State::Avg(None, _) | State::Best(None) | State::Bool(None) => {
            Finished::Null
        }
        State::Sum(Some(total)) => {
            let out = sum_out(partial_oid);
            Finished::Computed(total_value(total, out)?, out)
        }
        State::Best(Some(raw)) => Finished::Raw(raw.clone()),
        State::Bool(Some(b)) => Finished::Computed(Value::Bool(*b), Out::Bool),
        State::Avg(Some(_), 0) => Finished::Null,
        State::Avg(Some(total), count) => match total {
            Total::Float(f) => Finished::Computed(Value::Float(f / *count as f64), Out::Float8),
            Total::Int(i) => Finished::Computed(
                Value::Numeric(divide(
                    &Numeric::Finite(BigDecimal::from(BigInt::from(*i))),
                    *count,
                )),
                Out::Numeric,
            ),
            Total::Numeric(n) => {
                Finished::Computed(Value::Numeric(divide(n, *count)), Out::Numeric)
            }
        },
    })
}

fn total_value(total: &Total, out: Out) -> Result<Value<'static>, MergeError> {
    Ok(match total {
        Total::Int(i) if out == Out::Int8 => Value::Int(
            i64::try_from(*i).map_err(|_| MergeError::OutOfRange("bigint out of range".into()))?,
        ),
        Total::Int(i) => Value::Numeric(Numeric::Finite(BigDecimal::from(BigInt::from(*i)))),
        Total::Numeric(n) => Value::Numeric(n.clone()),
        Total::Float(f) => Value::Float(*f),
    })
}

/// `sum / count` as Postgres's numeric division gives it: the result scale of
/// `select_div_scale` (at least 16 significant digits, at least either input's display
/// scale), rounded half away from zero.
pub fn divide(sum: &Numeric, count: i64) -> Numeric {
    let Numeric::Finite(sum) = sum else {
        return sum.clone();
    };
    let (mantissa, scale) = sum.as_bigint_and_exponent();
    let (w1, d1) = weight_and_first_digit(sum);
    let (w2, d2) = weight_and_first_digit(&BigDecimal::from(count));
    let mut qweight = w1 - w2;
    if d1 <= d2 {
        qweight -= 1;
    }
    let rscale = (16 - qweight * 4).max(scale.max(0)).clamp(0, 1000);
    // round(mantissa × 10^(rscale − scale) / count)
    let (numerator, denominator) = if rscale >= scale {
        (
            mantissa * BigInt::from(10).pow((rscale - scale) as u32),
            BigInt::from(count),
        )
    } else {
        (
            mantissa,
            BigInt::from(count) * BigInt::from(10).pow((scale - rscale) as u32),
        )
    };
    let (mut q, r) = (&numerator / &denominator, &numerator % &denominator);
    let twice = r.magnitude() * 2u32;
    if &twice >= denominator.magnitude() {
        let negative = (numerator.sign() == Sign::Minus) != (denominator.sign() == Sign::Minus);
        q += if negative { -1 } else { 1 };
    }
    Numeric::Finite(BigDecimal::new(q, rscale))
}

/// The base-10000 weight and first digit of a value (0, 0 for zero), as `select_div_scale`
/// reads them.
fn weight_and_first_digit(v: &BigDecimal) -> (i64, i64) {
    if v.is_zero() {
        return (0, 0);
    }
    let (mantissa, scale) = v.abs().as_bigint_and_exponent();
    let digits = mantissa.to_string();
    // Decimal exponent of the first significant digit.
    let e = digits.len() as i64 - 1 - scale;
    let weight = e.div_euclid(4);
    // The base-10000 digit at `weight`: the decimal digits from 10^(4·weight+3) down.
    let shift = scale + 4 * weight; // v / 10000^weight = mantissa / 10^shift
    let first: BigInt = if shift >= 0 {
        let divisor = BigInt::from(10).pow(shift as u32);
        (&mantissa / divisor) % 10_000
    } else {
        (&mantissa * BigInt::from(10).pow((-shift) as u32)) % 10_000
    };
    (weight, first.to_string().parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::value::{numeric_text, parse_numeric};

    fn avg(sum: &str, count: i64) -> String {
        numeric_text(&divide(&parse_numeric(sum).unwrap(), count))
    }

    #[test]
    fn averages_have_postgres_scale_and_rounding() {
        // Values checked against PostgreSQL 15 (SELECT avg(x) over the same rows).
        assert_eq!(avg("10", 4), "2.5000000000000000");
        assert_eq!(avg("1", 3), "0.33333333333333333333");
        assert_eq!(avg("2", 3), "0.66666666666666666667");
        assert_eq!(avg("-2", 3), "-0.66666666666666666667");
        assert_eq!(avg("123456789", 7), "17636684.142857142857");
        assert_eq!(avg("1.50", 2), "0.75000000000000000000");
        assert_eq!(avg("0", 5), "0.00000000000000000000");
        assert_eq!(avg("30000", 3), "10000.0000000000000000");
    }
}
