//! The domain's closed sets of values: stored as text, spelled one way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// An enum stored as its name in a TEXT column, on both engines.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The names, for messages: `A, B or C`.
            pub fn names() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                    _ => names.join(""),
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("`{other}` is not one of {}", Self::names())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <str as Type<Sqlite>>::type_info()
            }
        }

        impl<'q> Encode<'q, Sqlite> for $name {
            fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'q, Sqlite>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, Sqlite>>::decode(value)?.parse()?)
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }
        }

        impl<'q> Encode<'q, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'q, Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, Postgres>>::decode(value)?.parse()?)
            }
        }
    };
}

text_enum!(
    /// Where a claim stands.
    ClaimStatus {
        /// Waiting for an operator's approval.
        Pending => "PENDING",
        /// Granted; an external sink is to pay it.
        Approved => "APPROVED",
        /// Refused: by an operator, or because the condition was not met.
        Rejected => "REJECTED",
        /// Delivered (written paid at once by the built-in ledger).
        Paid => "PAID",
        /// The sink refused it after every attempt; an operator may retry.
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);

text_enum!(
    /// Whether an event takes claims.
    EventStatus {
        Active => "ACTIVE",
        Inactive => "INACTIVE",
        Ended => "ENDED",
    }
);

/// An id the service makes: a UUID (v7, so ids sort in the order they
/// were made), kept in its hyphenated text form. Parsing one from a request
/// refuses anything else before a store is asked.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }

            /// `None` unless `text` is a UUID in its hyphenated form.
            pub fn parse(text: &str) -> Option<Self> {
                let uuid = uuid::Uuid::try_parse(text).ok()?;
                let canonical = uuid.hyphenated().to_string();
                (canonical == text.to_ascii_lowercase()).then_some(Self(canonical))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_id!(
    /// A reward claim's id.
    ClaimId
);
uuid_id!(
    /// An event's id.
    EventId
);
uuid_id!(
    /// A reward's id.
    RewardId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for status in ClaimStatus::ALL {
            assert_eq!(status.as_str().parse::<ClaimStatus>(), Ok(*status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in EventStatus::ALL {
            assert_eq!(status.as_str().parse::<EventStatus>(), Ok(*status));
        }
        assert_eq!(EventStatus::names(), "ACTIVE, INACTIVE or ENDED");
        assert!("GRANTED".parse::<ClaimStatus>().is_err());
    }

    #[test]
    fn ids_parse_only_from_uuids() {
        let id = ClaimId::new();
        assert_eq!(ClaimId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(ClaimId::parse(&id.as_str().to_uppercase()), Some(id));
        for junk in ["nope", "", "0193c0de00007000800000000000000", "0193c0de-0000-7000-8000-00000000000g"] {
            assert_eq!(ClaimId::parse(junk), None, "{junk}");
        }
    }
}
