//! One result value of a merged column, pure: decoded from a shard's text or binary form by its
//! type OID (the common types only), compared as Postgres orders them, and encoded again for
//! the values the sidecar computes itself (counts, sums, averages, bool aggregates).

use std::cmp::Ordering;
use std::str::FromStr;

use bigdecimal::num_bigint::{BigInt, Sign};
use bigdecimal::BigDecimal;
use bytes::{BufMut, BytesMut};

use super::MergeError;

pub const BOOL: u32 = 16;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;

/// A numeric value (NaN sorts above everything, as in Postgres).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Numeric {
    NegInfinity,
    Finite(BigDecimal),
    Infinity,
    NaN,
}

/// A decoded value.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    Bool(bool),
    /// Text (bytewise: the database's collation must be C), uuid, bpchar without its padding.
    Bytes(&'a [u8]),
    /// Days (date) or microseconds (timestamp, timestamptz in UTC) since 2000-01-01;
    /// ±infinity at the ends.
    Time(i64),
}

impl Value<'_> {
    /// Postgres's order for two values of the same column.
    pub fn order(&self, other: &Value<'_>) -> Ordering {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => float_cmp(*a, *b),
            (Value::Numeric(a), Value::Numeric(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Time(a), Value::Time(b)) => a.cmp(b),
            // Mixed kinds only meet in HAVING comparisons with literals.
            (a, b) => match (a.as_number(), b.as_number()) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => Ordering::Equal,
            },
        }
    }

    /// The value as a numeric, for comparisons across number kinds.
    fn as_number(&self) -> Option<Numeric> {
        match self {
            Value::Int(i) => Some(Numeric::Finite(BigDecimal::from(*i))),
            Value::Numeric(n) => Some(n.clone()),
            Value::Float(f) if f.is_nan() => Some(Numeric::NaN),
            Value::Float(f) if f.is_infinite() && *f > 0.0 => Some(Numeric::Infinity),
            Value::Float(f) if f.is_infinite() => Some(Numeric::NegInfinity),
            Value::Float(f) => BigDecimal::try_from(*f).ok().map(Numeric::Finite),
            _ => None,
        }
    }

    /// Bytes that are equal exactly when two values are equal (numeric 1.0 = 1.00, float
    /// -0 = 0), for grouping and DISTINCT.
    pub fn canonical(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
            Value::Float(f) if *f == 0.0 => out.extend_from_slice(&0f64.to_be_bytes()),
            Value::Float(f) if f.is_nan() => out.extend_from_slice(b"NaN"),
            Value::Float(f) => out.extend_from_slice(&f.to_be_bytes()),
            Value::Numeric(Numeric::Finite(d)) => {
                out.extend_from_slice(d.normalized().to_string().as_bytes())
            }
            Value::Numeric(other) => out.extend_from_slice(format!("{other:?}").as_bytes()),
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::Bytes(b) => out.extend_from_slice(b),
            Value::Time(t) => out.extend_from_slice(&t.to_be_bytes()),
        }
    }
}

fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Whether values of this type can be decoded (and so ordered, grouped, aggregated).
pub fn supported(oid: u32) -> bool {
    matches!(
        oid,
        BOOL | NAME
            | INT8
            | INT2
            | INT4
            | TEXT
            | OID
            | FLOAT4
            | FLOAT8
            | BPCHAR
            | VARCHAR
            | DATE
            | TIMESTAMP
            | TIMESTAMPTZ
            | NUMERIC
            | UUID
    )
}

/// Whether the type orders by the collation (text types).
pub fn collatable(oid: u32) -> bool {
    matches!(oid, TEXT | VARCHAR | BPCHAR | NAME)
}

/// Decodes one non-NULL value of type `oid` in `binary` or text form.
pub fn decode(oid: u32, binary: bool, raw: &[u8]) -> Result<Value<'_>, MergeError> {
    let bad = || MergeError::Malformed(format!("a value of type {oid} could not be read"));
    if binary {
        return decode_binary(oid, raw).ok_or_else(bad);
    }
    let text = std::str::from_utf8(raw).map_err(|_| bad())?;
    Ok(match oid {
        INT2 | INT4 | INT8 | OID => Value::Int(text.parse().map_err(|_| bad())?),
        FLOAT4 | FLOAT8 => Value::Float(parse_float(text).ok_or_else(bad)?),
        NUMERIC => Value::Numeric(parse_numeric(text).ok_or_else(bad)?),
        BOOL => Value::Bool(text == "t"),
        TEXT | VARCHAR | NAME | UUID => Value::Bytes(raw),
        BPCHAR => Value::Bytes(trim_padding(raw)),
        DATE => Value::Time(parse_date(text).ok_or_else(bad)?),
        TIMESTAMP | TIMESTAMPTZ => Value::Time(parse_timestamp(text).ok_or_else(bad)?),
        _ => return Err(MergeError::Unsupported(unsupported_type(oid))),
    })
}

/// The message for a column of a type the merge does not read.
pub fn unsupported_type(oid: u32) -> String {
    format!(
        "a column of type OID {oid} would have to be compared or aggregated by the sidecar, which reads \
         integers, numeric, float, bool, text, varchar, char, date, timestamp(tz) and uuid: cast it \
         to one of those or add a shard key"
    )
}

fn trim_padding(raw: &[u8]) -> &[u8] {
    let end = raw.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    &raw[..end]
}

fn decode_binary(oid: u32, raw: &[u8]) -> Option<Value<'_>> {
    let be = |n: usize| -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        (raw.len() == n).then(|| out[8 - n..].copy_from_slice(raw))?;
        Some(out)
    };
    Some(match oid {
        INT2 => Value::Int(i16::from_be_bytes(raw.try_into().ok()?).into()),
        INT4 => Value::Int(i32::from_be_bytes(raw.try_into().ok()?).into()),
        OID => Value::Int(u32::from_be_bytes(raw.try_into().ok()?).into()),
        INT8 => Value::Int(i64::from_be_bytes(be(8)?)),
        FLOAT4 => Value::Float(f32::from_be_bytes(raw.try_into().ok()?).into()),
        FLOAT8 => Value::Float(f64::from_be_bytes(be(8)?)),
        BOOL => Value::Bool(raw.first()? != &0),
        TEXT | VARCHAR | NAME | UUID => Value::Bytes(raw),
        BPCHAR => Value::Bytes(trim_padding(raw)),
        DATE => Value::Time(i32::from_be_bytes(raw.try_into().ok()?).into()),
        TIMESTAMP | TIMESTAMPTZ => Value::Time(i64::from_be_bytes(be(8)?)),
        NUMERIC => Value::Numeric(numeric_from_binary(raw)?),
        _ => return None,
    })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// A numeric in Postgres's text form.
pub fn parse_numeric(text: &str) -> Option<Numeric> {
    Some(match text {
        "NaN" => Numeric::NaN,
        "Infinity" => Numeric::Infinity,
        "-Infinity" => Numeric::NegInfinity,
        _ => Numeric::Finite(BigDecimal::from_str(text).ok()?),
    })
}

const INFINITY_TIME: i64 = i64::MAX;

/// Days since 2000-01-01 of an ISO date (`YYYY-MM-DD`, DateStyle ISO); BC dates are refused.
fn parse_date(text: &str) -> Option<i64> {
    match text {
        "infinity" => return Some(INFINITY_TIME),
        "-infinity" => return Some(-INFINITY_TIME),
        _ => {}
    }
    let (y, rest) = text.split_once('-')?;
    let (m, d) = rest.split_once('-')?;
    if d.len() != 2 || m.len() != 2 {
        return None;
    }
    Some(days_from_civil(
        y.parse().ok()?,
        m.parse().ok()?,
        d.parse().ok()?,
    ))
}

/// Microseconds since 2000-01-01 00:00 UTC of an ISO timestamp, with or without an offset.
fn parse_timestamp(text: &str) -> Option<i64> {
    match text {
        "infinity" => return Some(INFINITY_TIME),
        "-infinity" => return Some(-INFINITY_TIME),
        _ => {}
    }
    let (date, time) = text.split_once(' ')?;
    let days = parse_date(date)?;
    // The offset starts at the first sign after the seconds.
    let (clock, offset) = match time.find(['+', '-']) {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time, None),
    };
    let mut parts = clock.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let seconds = parts.next()?;
    let (s, frac) = seconds.split_once('.').unwrap_or((seconds, ""));
    let s: i64 = s.parse().ok()?;
    let micros: i64 = match frac.len() {
        0 => 0,
        n if n <= 6 => frac.parse::<i64>().ok()? * 10i64.pow(6 - n as u32),
        _ => return None,
    };
    let mut total = ((days * 24 + h) * 60 + m) * 60 + s;
    if let Some(offset) = offset {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut fields = offset[1..].split(':');
        let oh: i64 = fields.next()?.parse().ok()?;
        let om: i64 = fields.next().map_or(Some(0), |f| f.parse().ok())?;
        let os: i64 = fields.next().map_or(Some(0), |f| f.parse().ok())?;
        total -= sign * (oh * 3600 + om * 60 + os);
    }
    Some(total * 1_000_000 + micros)
}

/// Days from 2000-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

/// Postgres's binary numeric: ndigits, weight, sign, dscale, base-10000 digits.
fn numeric_from_binary(raw: &[u8]) -> Option<Numeric> {
    let field =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(raw.get(i..i + 2)?.try_into().ok()?)) };
    let (ndigits, weight, sign, dscale) = (field(0)?, field(2)? as i16, field(4)?, field(6)?);
    match sign {
        0xC000 => return Some(Numeric::NaN),
        0xD000 => return Some(Numeric::Infinity),
        0xF000 => return Some(Numeric::NegInfinity),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let mut mantissa = BigInt::from(0);
    for i in 0..usize::from(ndigits) {
        mantissa = mantissa * 10_000 + BigInt::from(field(8 + 2 * i)?);
    }
    if sign == 0x4000 {
        mantissa = -mantissa;
    }
    // value = mantissa × 10000^(weight − ndigits + 1)
    let exponent = 4 * (i64::from(weight) - i64::from(ndigits) + 1);
    let value = BigDecimal::new(mantissa, -exponent);
    Some(Numeric::Finite(value.with_scale(i64::from(dscale))))
}

/// How a computed value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
}

/// Appends a computed value in text or binary form (no length prefix).
pub fn encode(value: &Value<'_>, out_type: Out, binary: bool, buf: &mut BytesMut) {
    match (value, out_type) {
        (Value::Int(i), Out::Int8) if binary => buf.put_i64(*i),
        (Value::Int(i), Out::Int8) => buf.extend_from_slice(i.to_string().as_bytes()),
        (Value::Bool(b), _) if binary => buf.put_u8(u8::from(*b)),
        (Value::Bool(b), _) => buf.put_u8(if *b { b't' } else { b'f' }),
        (Value::Float(f), Out::Float4) if binary => buf.put_f32(*f as f32),
        (Value::Float(f), Out::Float4) => buf.extend_from_slice(float_text(*f, true).as_bytes()),
        (Value::Float(f), _) if binary => buf.put_f64(*f),
        (Value::Float(f), _) => buf.extend_from_slice(float_text(*f, false).as_bytes()),
        (Value::Numeric(n), _) if binary => numeric_to_binary(n, buf),
        (Value::Numeric(n), _) => buf.extend_from_slice(numeric_text(n).as_bytes()),
        (Value::Int(i), _) if binary => numeric_to_binary(&Numeric::Finite((*i).into()), buf),
        (Value::Int(i), _) => buf.extend_from_slice(i.to_string().as_bytes()),
        (Value::Bytes(b), _) => buf.extend_from_slice(b),
        (Value::Time(t), _) => buf.extend_from_slice(t.to_string().as_bytes()),
    }
}

/// A numeric as Postgres prints it (all of its display scale, never an exponent).
pub fn numeric_text(n: &Numeric) -> String {
    match n {
        Numeric::NaN => "NaN".into(),
        Numeric::Infinity => "Infinity".into(),
        Numeric::NegInfinity => "-Infinity".into(),
        Numeric::Finite(d) => {
            let (mantissa, scale) = d.as_bigint_and_exponent();
            let digits = mantissa.magnitude().to_string();
            let sign = if mantissa.sign() == Sign::Minus {
                "-"
            } else {
                ""
            };
            if scale <= 0 {
                let zeros = "0".repeat(usize::try_from(-scale).unwrap_or(0));
                let body = if digits == "0" {
                    "0".into()
                } else {
                    digits + &zeros
                };
                return format!("{sign}{body}");
            }
            let scale = usize::try_from(scale).unwrap_or(0);
            let padded = format!("{digits:0>width$}", width = scale + 1);
            let (int, frac) = padded.split_at(padded.len() - scale);
            format!("{sign}{int}.{frac}")
        }
    }
}

/// A float as Postgres prints it with `extra_float_digits` > 0: the shortest digits that read
/// back exactly, in exponent form below 1e-4 or from 1e15 (1e6 for float4) up.
pub fn float_text(f: f64, float4: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = if float4 {
        format!("{:e}", f as f32)
    } else {
        format!("{f:e}")
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let limit = if float4 { 6 } else { 15 };
    if exp < -4 || exp >= limit {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    if float4 {
        format!("{}", f as f32)
    } else {
        format!("{f}")
    }
}

fn numeric_to_binary(n: &Numeric, buf: &mut BytesMut) {
    let special = |buf: &mut BytesMut, sign: u16| {
        buf.put_u16(0);
        buf.put_i16(0);
        buf.put_u16(sign);
        buf.put_u16(0);
    };
    let d = match n {
        Numeric::NaN => return special(buf, 0xC000),
        Numeric::Infinity => return special(buf, 0xD000),
        Numeric::NegInfinity => return special(buf, 0xF000),
        Numeric::Finite(d) => d,
    };
    let text = numeric_text(n);
    let negative = text.starts_with('-');
    let body = text.trim_start_matches('-');
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let dscale = frac.len();
    // Base-10000 groups aligned on the decimal point.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits_text = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
    let mut digits: Vec<u16> = digits_text
        .as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0')))
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i16 - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let _ = d;
    buf.put_u16(digits.len() as u16);
    buf.put_i16(weight);
    buf.put_u16(if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    });
    buf.put_u16(dscale as u16);
    for digit in digits {
        buf.put_u16(digit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_read_and_print_as_postgres() {
        for text in [
            "0",
            "1.50",
            "-12345.6789",
            "0.0001",
            "100000000",
            "-0.000",
            "1e3",
        ] {
            let n = parse_numeric(text).unwrap();
            let mut bin = BytesMut::new();
            numeric_to_binary(&n, &mut bin);
            let back = numeric_from_binary(&bin).unwrap();
            assert_eq!(numeric_text(&back), numeric_text(&n), "{text}");
        }
        assert_eq!(numeric_text(&parse_numeric("1.50").unwrap()), "1.50");
        assert_eq!(numeric_text(&parse_numeric("-0.05").unwrap()), "-0.05");
        // 1234.5 as Postgres sends it: ndigits 2, weight 0, sign 0, dscale 1, 1234 5000.
        let wire = [0, 2, 0, 0, 0, 0, 0, 1, 0x04, 0xD2, 0x13, 0x88];
        assert_eq!(numeric_text(&numeric_from_binary(&wire).unwrap()), "1234.5");
        let mut bin = BytesMut::new();
        numeric_to_binary(&parse_numeric("1234.5").unwrap(), &mut bin);
        assert_eq!(&bin[..], &wire);
    }

    #[test]
    fn floats_print_as_postgres() {
        assert_eq!(float_text(1e15, false), "1e+15");
        assert_eq!(float_text(123456789012345.0, false), "123456789012345");
        assert_eq!(float_text(1e-5, false), "1e-05");
        assert_eq!(float_text(0.1 + 0.2, false), "0.30000000000000004");
        assert_eq!(float_text(2.5, true), "2.5");
        assert_eq!(float_text(1e6, true), "1e+06");
    }

    #[test]
    fn times_order_across_offsets() {
        let a = parse_timestamp("2024-03-01 10:00:00+02").unwrap();
        let b = parse_timestamp("2024-03-01 09:30:00+00").unwrap();
        assert!(a < b);
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(60));
        assert!(
            parse_timestamp("2024-03-01 10:00:00.5").unwrap()
                > parse_timestamp("2024-03-01 10:00:00").unwrap()
        );
    }

    #[test]
    fn orders_as_postgres() {
        assert_eq!(
            Value::Float(f64::NAN).order(&Value::Float(f64::INFINITY)),
            Ordering::Greater
        );
        assert_eq!(
            Value::Bytes(b"ab").order(&Value::Bytes(b"b")),
            Ordering::Less
        );
        assert_eq!(
            decode(BPCHAR, false, b"a  ")
                .unwrap()
                .order(&decode(BPCHAR, false, b"a").unwrap()),
            Ordering::Equal
        );
        assert_eq!(
            Value::Int(2).order(&Value::Numeric(parse_numeric("1.5").unwrap())),
            Ordering::Greater
        );
    }
}
