//! Event conditions: a typed tree, parsed and validated at the edge.
//!
//! A condition arrives as JSON (`{"type": "loginDays", "days": 3}`, or `all` /
//! `any` with `conditions: [...]`) and is parsed into [`Condition`] with every
//! problem reported with the path of the offending field
//! (`condition.conditions[1].days`). Unknown types, unknown or missing
//! parameters, values out of range, empty `all`/`any` and trees deeper than
//! [`MAX_DEPTH`] are refused, and so are conditions the event's window makes
//! impossible (three consecutive login days in a two-day event), so no event
//! exists that could never be claimed because of its condition.

use rewards_kit::problem::FieldError;
use serde_json::{Map, Value, json};

/// How deep `all`/`any` may nest.
pub const MAX_DEPTH: usize = 5;
/// Most sub-conditions of one `all`/`any`.
pub const MAX_CHILDREN: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    None,
    LoginDays { days: u32 },
    LoginStreak { days: u32 },
    InviteFriends { count: u32 },
    QuestClear { quest_id: String },
    LevelReached { level: u32 },
    ActivityCount { activity: String, count: u32, matching: Map<String, Value> },
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

impl Condition {
    /// Parses `value` found at `path`; every problem found is reported.
    pub fn parse(value: &Value, path: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let condition = parse_node(value, path, 1, &mut errors);
        match condition {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }

    /// The canonical JSON form (what is stored and shown).
    pub fn to_json(&self) -> Value {
        match self {
            Condition::None => json!({ "type": "none" }),
            Condition::LoginDays { days } => json!({ "type": "loginDays", "days": days }),
            Condition::LoginStreak { days } => json!({ "type": "loginStreak", "days": days }),
            Condition::InviteFriends { count } => json!({ "type": "inviteFriends", "count": count }),
            Condition::QuestClear { quest_id } => json!({ "type": "questClear", "questId": quest_id }),
            Condition::LevelReached { level } => json!({ "type": "levelReached", "level": level }),
            Condition::ActivityCount { activity, count, matching } if matching.is_empty() => {
                json!({ "type": "activityCount", "activity": activity, "count": count })
            }
            Condition::ActivityCount { activity, count, matching } => {
                json!({ "type": "activityCount", "activity": activity, "count": count, "match": matching })
            }
            Condition::All(children) => {
                json!({ "type": "all", "conditions": children.iter().map(Condition::to_json).collect::<Vec<_>>() })
            }
            Condition::Any(children) => {
                json!({ "type": "any", "conditions": children.iter().map(Condition::to_json).collect::<Vec<_>>() })
            }
        }
    }

    /// Day-counting conditions that need more days than the window has can
    /// never be met: reported with their paths. (`any` is impossible only if
    /// every branch is.)
    pub fn impossible_in(&self, window_days: u32, path: &str) -> Vec<FieldError> {
        match self {
            Condition::LoginDays { days } | Condition::LoginStreak { days } if *days > window_days => {
                vec![FieldError::new(
                    format!("{path}.days"),
                    format!("needs {days} days but the event lasts {window_days}"),
                )]
            }
            Condition::All(children) => children
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.impossible_in(window_days, &format!("{path}.conditions[{i}]")))
                .collect(),
            Condition::Any(children) => {
                let per_branch: Vec<Vec<FieldError>> = children
                    .iter()
                    .enumerate()
                    .map(|(i, c)| c.impossible_in(window_days, &format!("{path}.conditions[{i}]")))
                    .collect();
                if per_branch.iter().all(|e| !e.is_empty()) {
                    per_branch.into_iter().flatten().collect()
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

const TYPES: &str = "none, loginDays, loginStreak, inviteFriends, questClear, levelReached, activityCount, all, any";

fn parse_node(value: &Value, path: &str, depth: usize, errors: &mut Vec<FieldError>) -> Option<Condition> {
    let Some(object) = value.as_object() else {
        errors.push(FieldError::new(path, "must be an object with a `type`"));
        return None;
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        errors.push(FieldError::new(format!("{path}.type"), format!("required: one of {TYPES}")));
        return None;
    };
    let allowed: &[&str] = match kind {
        "none" => &[],
        "loginDays" | "loginStreak" => &["days"],
        "inviteFriends" => &["count"],
        "questClear" => &["questId"],
        "levelReached" => &["level"],
        "activityCount" => &["activity", "count", "match"],
        "all" | "any" => &["conditions"],
        other => {
            errors.push(FieldError::new(format!("{path}.type"), format!("unknown type `{other}`; one of {TYPES}")));
            return None;
        }
    };
    for key in object.keys().filter(|k| *k != "type" && !allowed.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{path}.{key}"), format!("`{kind}` takes no `{key}`")));
    }
    let number = |name: &str, max: u32, errors: &mut Vec<FieldError>| -> Option<u32> {
        let field = format!("{path}.{name}");
        match object.get(name) {
            None => {
                errors.push(FieldError::new(field, "required"));
                None
            }
            Some(v) => match v.as_u64().filter(|n| (1..=u64::from(max)).contains(n)) {
                Some(n) => Some(n as u32),
                None => {
                    errors.push(FieldError::new(field, format!("must be a whole number from 1 to {max}")));
                    None
                }
            },
        }
    };
    let text = |name: &str, max: usize, errors: &mut Vec<FieldError>| -> Option<String> {
        let field = format!("{path}.{name}");
        match object.get(name).and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() && s.chars().count() <= max => Some(s.to_owned()),
            _ => {
                errors
                    .push(FieldError::new(field, format!("required: a non-empty string of at most {max} characters")));
                None
            }
        }
    };
    match kind {
        "none" => Some(Condition::None),
        "loginDays" => number("days", 366, errors).map(|days| Condition::LoginDays { days }),
        "loginStreak" => number("days", 366, errors).map(|days| Condition::LoginStreak { days }),
        "inviteFriends" => number("count", 10_000, errors).map(|count| Condition::InviteFriends { count }),
        "questClear" => text("questId", 100, errors).map(|quest_id| Condition::QuestClear { quest_id }),
        "levelReached" => number("level", 1_000_000, errors).map(|level| Condition::LevelReached { level }),
        "activityCount" => {
            let activity = text("activity", 64, errors);
            let count = number("count", 1_000_000, errors);
            let matching = parse_match(object.get("match"), &format!("{path}.match"), errors);
            Some(Condition::ActivityCount { activity: activity?, count: count?, matching: matching? })
        }
        "all" | "any" => {
            let field = format!("{path}.conditions");
            if depth >= MAX_DEPTH {
                errors.push(FieldError::new(field, format!("conditions nest at most {MAX_DEPTH} levels deep")));
                return None;
            }
            let Some(children) = object.get("conditions").and_then(Value::as_array) else {
                errors.push(FieldError::new(field, "required: a list of conditions"));
                return None;
            };
            if children.is_empty() || children.len() > MAX_CHILDREN {
                errors.push(FieldError::new(field, format!("must hold 1 to {MAX_CHILDREN} conditions")));
                return None;
            }
            let parsed: Vec<Option<Condition>> = children
                .iter()
                .enumerate()
                .map(|(i, child)| parse_node(child, &format!("{path}.conditions[{i}]"), depth + 1, errors))
                .collect();
            let parsed: Option<Vec<Condition>> = parsed.into_iter().collect();
            parsed.map(|c| if kind == "all" { Condition::All(c) } else { Condition::Any(c) })
        }
        _ => unreachable!("every type was matched above"),
    }
}

/// `match`: a flat object of at most 16 attributes with scalar values.
fn parse_match(value: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) -> Option<Map<String, Value>> {
    match value {
        None => Some(Map::new()),
        Some(Value::Object(map)) if map.len() <= 16 => {
            let mut ok = true;
            for (key, v) in map {
                if !(v.is_string() || v.is_number() || v.is_boolean()) || key.is_empty() || key.len() > 64 {
                    errors.push(FieldError::new(format!("{path}.{key}"), "must be a string, number or boolean"));
                    ok = false;
                }
            }
            ok.then(|| map.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(path, "must be an object of at most 16 attributes"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: Value) -> Vec<String> {
        Condition::parse(&value, "condition").unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn every_type_parses_and_round_trips() {
        let tree = json!({ "type": "all", "conditions": [
            { "type": "none" },
            { "type": "loginDays", "days": 3 },
            { "type": "loginStreak", "days": 2 },
            { "type": "inviteFriends", "count": 2 },
            { "type": "questClear", "questId": "Q-17" },
            { "type": "levelReached", "level": 30 },
            { "type": "activityCount", "activity": "PVP_WIN", "count": 5, "match": { "mode": "ranked" } },
            { "type": "any", "conditions": [{ "type": "loginDays", "days": 1 }] },
        ]});
        let parsed = Condition::parse(&tree, "condition").unwrap();
        assert_eq!(parsed.to_json(), tree);
        assert_eq!(Condition::parse(&parsed.to_json(), "c").unwrap(), parsed);
    }

    #[test]
    fn problems_are_reported_with_their_paths() {
        assert_eq!(fields(json!({ "type": "loginDayz", "days": 3 })), ["condition.type"]);
        assert_eq!(fields(json!({ "days": 3 })), ["condition.type"]);
        assert_eq!(fields(json!("loginDays")), ["condition"]);
        assert_eq!(fields(json!({ "type": "loginDays" })), ["condition.days"]);
        assert_eq!(fields(json!({ "type": "loginDays", "days": 0 })), ["condition.days"]);
        assert_eq!(fields(json!({ "type": "loginDays", "days": "3" })), ["condition.days"]);
        assert_eq!(fields(json!({ "type": "loginDays", "days": 3, "count": 1 })), ["condition.count"]);
        assert_eq!(fields(json!({ "type": "questClear", "questId": "" })), ["condition.questId"]);
        assert_eq!(fields(json!({ "type": "all", "conditions": [] })), ["condition.conditions"]);
        assert_eq!(fields(json!({ "type": "any" })), ["condition.conditions"]);
        assert_eq!(
            fields(
                json!({ "type": "all", "conditions": [{ "type": "none" }, { "type": "levelReached", "level": -1 }] })
            ),
            ["condition.conditions[1].level"]
        );
        assert_eq!(
            fields(json!({ "type": "activityCount", "activity": "X", "count": 1, "match": { "a": { "nested": 1 } } })),
            ["condition.match.a"]
        );
    }

    #[test]
    fn trees_deeper_than_the_bound_are_refused() {
        let mut tree = json!({ "type": "none" });
        for _ in 0..MAX_DEPTH - 1 {
            tree = json!({ "type": "all", "conditions": [tree] });
        }
        assert!(Condition::parse(&tree, "c").is_ok(), "{MAX_DEPTH} levels are fine");
        let deeper = json!({ "type": "all", "conditions": [tree] });
        assert!(Condition::parse(&deeper, "c").is_err());
    }

    #[test]
    fn conditions_the_window_cannot_hold_are_impossible() {
        let streak = Condition::parse(&json!({ "type": "loginStreak", "days": 3 }), "c").unwrap();
        assert_eq!(streak.impossible_in(2, "condition")[0].field, "condition.days");
        assert!(streak.impossible_in(3, "condition").is_empty());
        let any = Condition::parse(
            &json!({ "type": "any", "conditions": [{ "type": "loginDays", "days": 9 }, { "type": "questClear", "questId": "q" }] }),
            "c",
        )
        .unwrap();
        assert!(any.impossible_in(2, "condition").is_empty(), "the quest branch can still be met");
    }
}
