//! Arithmetic of templates (`add`, `subtract`, `multiply`, `divide`, `round`) in exact
//! decimals (28 significant digits), so that `0.1 + 0.2` is `0.3` and `1.50 + 1` is `2.50`: a
//! FHIR decimal's written precision is kept where the result is text, and the result is a JSON
//! number where it is a value.

use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Number, Value};

/// The most decimal places `round` takes (and a decimal can have).
pub const MAX_PLACES: u32 = 28;

/// Why an arithmetic function failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("expected a number, found {0}")]
    Expected(&'static str),
    #[error("division by zero")]
    DivisionByZero,
    #[error("the number is too large for a decimal of 28 digits")]
    Overflow,
    #[error("the places to round to must be a whole number from 0 to {MAX_PLACES}, found `{0}`")]
    Places(String),
}

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Subtract,
    Multiply,
    Divide,
}

/// A value read as an exact decimal: a JSON number, or text holding one (`"1.50"`, `" 3 "`,
/// `"2.5e3"`), as sources write them.
pub fn decimal(v: &Value) -> Result<Decimal, NumberError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => return Err(NumberError::Expected(crate::model::fhir::kind(other))),
    };
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && digits != ".";
    let parsed = if plain {
        // Digits that no 28-digit decimal holds are a number all the same: say so.
        return Decimal::from_str_exact(&text)
            .or_else(|_| Decimal::from_str(&text))
            .map_err(|_| NumberError::Overflow);
    } else if text.contains(['e', 'E']) && text.len() <= 40 {
        Decimal::from_scientific(&text)
    } else {
        return Err(NumberError::NotANumber(super::text::shown(&text)));
    };
    parsed.map_err(|_| NumberError::NotANumber(super::text::shown(&text)))
}

/// `a op b`. Sums and differences keep the larger number of places (`1.50 + 1` = `2.50`),
/// products the sum of both (`1.5 * 1.5` = `2.25`); a quotient has as many places as it needs,
/// up to 28 significant digits, trailing zeros dropped (`10 / 4` = `2.5`).
pub fn apply(op: Op, a: &Value, b: &Value) -> Result<Decimal, NumberError> {
    let (a, b) = (decimal(a)?, decimal(b)?);
    match op {
        Op::Add => a.checked_add(b),
        Op::Subtract => a.checked_sub(b),
        Op::Multiply => a.checked_mul(b),
        Op::Divide if b.is_zero() => return Err(NumberError::DivisionByZero),
        Op::Divide => a.checked_div(b).map(|q| q.normalize()),
    }
    .ok_or(NumberError::Overflow)
}

/// The places argument of `round`.
pub fn places(v: &Value) -> Result<u32, NumberError> {
    let written = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = || NumberError::Places(super::text::shown(&written));
    let d = decimal(v).map_err(|_| bad())?;
    if !d.fract().is_zero() || d.is_sign_negative() || d > Decimal::from(MAX_PLACES) {
        return Err(bad());
    }
    u32::try_from(d.mantissa() / 10_i128.pow(d.scale())).map_err(|_| bad())
}

/// `v` rounded to `places` decimal places, halves away from zero (`2.345` to 2 places is
/// `2.35`, `-0.5` to 0 is `-1`), written with exactly that many places.
pub fn round(v: &Value, places: u32) -> Result<Decimal, NumberError> {
    let mut d = decimal(v)?.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    d.rescale(places);
    Ok(d)
}

/// A result as a JSON value: an integer when it has no places, else the nearest double (JSON
/// numbers carry no trailing zeros; 15 significant digits are exact).
pub fn to_value(d: Decimal) -> Value {
    if d.scale() == 0
        && let Ok(i) = i64::try_from(d.mantissa())
    {
        return Value::from(i);
    }
    d.to_string()
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(op: Op, a: Value, b: Value) -> String {
        apply(op, &a, &b)
            .map(|d| d.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn exact_decimals_from_numbers_and_text() {
        assert_eq!(text(Op::Add, json!(0.1), json!(0.2)), "0.3");
        assert_eq!(text(Op::Add, json!("1.50"), json!(1)), "2.50");
        assert_eq!(text(Op::Subtract, json!(" 5 "), json!("7.25")), "-2.25");
        assert_eq!(text(Op::Multiply, json!("1.5"), json!("1.5")), "2.25");
        assert_eq!(text(Op::Divide, json!(10), json!(4)), "2.5");
        assert_eq!(
            text(Op::Divide, json!(1), json!(3)),
            "0.3333333333333333333333333333"
        );
        assert_eq!(text(Op::Multiply, json!("2.5e3"), json!(2)), "5000");
        assert_eq!(
            to_value(apply(Op::Add, &json!(1), &json!(2)).expect("a value")),
            json!(3)
        );
        assert_eq!(
            to_value(apply(Op::Add, &json!("0.1"), &json!("0.2")).expect("a value")),
            json!(0.3)
        );
    }

    #[test]
    fn errors_are_named() {
        assert_eq!(
            text(Op::Divide, json!(1), json!("0.00")),
            "division by zero"
        );
        assert_eq!(
            text(Op::Add, json!("12 mg"), json!(1)),
            "`12 mg` is not a number"
        );
        assert_eq!(
            text(Op::Add, json!(true), json!(1)),
            "expected a number, found a boolean"
        );
        assert_eq!(text(Op::Add, json!(""), json!(1)), "`` is not a number");
        assert_eq!(text(Op::Add, json!("."), json!(1)), "`.` is not a number");
        assert!(text(Op::Multiply, json!("1e27"), json!("1e27")).contains("too large"));
        assert!(
            text(Op::Add, json!(format!("1e{}", "9".repeat(50))), json!(1))
                .contains("not a number")
        );
    }

    #[test]
    fn rounding_half_away_from_zero_to_the_places() {
        assert_eq!(
            round(&json!("2.345"), 2).expect("a value").to_string(),
            "2.35"
        );
        assert_eq!(round(&json!(-0.5), 0).expect("a value").to_string(), "-1");
        assert_eq!(round(&json!("3"), 2).expect("a value").to_string(), "3.00");
        assert_eq!(places(&json!(2)).expect("a value"), 2);
        assert!(places(&json!(-1)).is_err());
        assert!(places(&json!("1.5")).is_err());
        assert!(places(&json!(29)).is_err());
    }
}
