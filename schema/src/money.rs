//! Money as integer minor units plus an ISO 4217 currency code. Never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 alphabetic currency code such as `EUR`: exactly three ASCII
/// upper-case letters. Whether the code is actually assigned by ISO is not
/// checked; a fork that needs that adds a table here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// Why a string is not a [`Currency`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be a three-letter upper-case ISO 4217 code, got {0:?}")]
pub struct InvalidCurrency(pub String);

impl Currency {
    /// The code as written on the wire, e.g. `"EUR"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidCurrency;

    fn try_from(code: String) -> Result<Self, Self::Error> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code))
        } else {
            Err(InvalidCurrency(code))
        }
    }
}

impl TryFrom<&str> for Currency {
    type Error = InvalidCurrency;

    fn try_from(code: &str) -> Result<Self, Self::Error> {
        Self::try_from(code.to_owned())
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in the currency's minor unit (cents for EUR/USD, yen for JPY).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Never negative: every command rejects a negative amount (422), and
    /// every amount served is derived from accepted commands.
    #[schema(minimum = 0, example = 1999)]
    pub amount_minor: i64,
    /// ISO 4217 code: three ASCII upper-case letters; any other string is
    /// refused when the JSON is read.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_accepts_three_upper_case_letters_only() {
        assert!(Currency::try_from("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", "", "€UR"] {
            assert!(Currency::try_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn currency_is_validated_when_deserialized() {
        let err = serde_json::from_str::<Money>(r#"{"amount_minor":1,"currency":"usd"}"#);
        assert!(err.is_err());
    }
}
