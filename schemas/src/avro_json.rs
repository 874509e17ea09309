//! Avro's JSON encoding (the specification's "JSON Encoding"), for files a person or an export
//! script writes: one record per line in `boomerang backfill`'s JSON-lines input.
//!
//! It differs from plain JSON where Avro needs to know more: a union's non-null value is
//! wrapped in an object naming its branch (`{"string": "a"}`, `{"boomerang.Money": {...}}`),
//! `null` is bare, an enum is its symbol, `bytes` and `fixed` are strings of code points 0–255,
//! and a logical type is written as its underlying type (a `timestamp-micros` is a number of
//! microseconds). Reading also takes a union's value unwrapped when exactly one branch fits it,
//! and leaves out a field that has a default: exports seldom wrap `"reason": "DEFECTIVE"`.
//!
//! Decoding goes through the binary datum, so a JSON record is checked against the schema
//! exactly as a published one is, and the model is built by the same reader.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{Map, Value as Json};

use crate::codec::{self, AvroRecord};

/// Why a JSON record is not a record of the schema, with the field's path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonError {
    pub path: String,
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> JsonError {
    JsonError {
        path: if path.is_empty() {
            "(record)".to_string()
        } else {
            path.to_string()
        },
        message: message.into(),
    }
}

/// Decodes one record in Avro's JSON encoding into the model.
pub fn decode<T: AvroRecord>(text: &str) -> Result<T, JsonError> {
    let json: Json = serde_json::from_str(text).map_err(|e| error("", e.to_string()))?;
    let schema = T::KIND.schema();
    let resolved = ResolvedSchema::new(schema).map_err(|e| error("", e.to_string()))?;
    let value = to_value(&json, schema, resolved.get_names(), "")?;
    let datum = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .map_err(|e| error("", e.to_string()))?;
    codec::decode(&datum).map_err(|e| error("", boomerang_error_chain(&e)))
}

/// Encodes a model record in Avro's JSON encoding, on one line.
pub fn encode<T: AvroRecord>(record: &T) -> Result<String, JsonError> {
    let schema = T::KIND.schema();
    let datum = codec::encode(record).map_err(|e| error("", boomerang_error_chain(&e)))?;
    let value = GenericDatumReader::builder(schema)
        .build()
        .and_then(|reader| reader.read_value(&mut datum.as_slice()))
        .map_err(|e| error("", e.to_string()))?;
    let resolved = ResolvedSchema::new(schema).map_err(|e| error("", e.to_string()))?;
    let json = to_json(&value, schema, resolved.get_names())?;
    serde_json::to_string(&json).map_err(|e| error("", e.to_string()))
}

fn boomerang_error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn lookup<'a>(name: &Name, names: &NamesRef<'a>, path: &str) -> Result<&'a Schema, JsonError> {
    names
        .get(name)
        .copied()
        .ok_or_else(|| error(path, format!("unknown type {}", name.fullname(None))))
}

/// The names a union branch may be written as: the full name of a named type (and its short
/// name, leniently), the type's name for the others.
fn branch_names(schema: &Schema) -> Vec<String> {
    if let Some(name) = schema.name() {
        return vec![name.fullname(None), name.name().to_string()];
    }
    if let Schema::Ref { name } = schema {
        return vec![name.fullname(None), name.name().to_string()];
    }
    let primitive = match schema {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int | Schema::Date | Schema::TimeMillis => "int",
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "long",
        Schema::Float => "float",
        Schema::Double => "double",
        Schema::Bytes | Schema::Decimal(_) | Schema::BigDecimal => "bytes",
        Schema::String | Schema::Uuid(_) => "string",
        Schema::Array(_) => "array",
        Schema::Map(_) => "map",
        _ => "",
    };
    vec![primitive.to_string()]
}

fn integer(json: &Json, path: &str) -> Result<i64, JsonError> {
    json.as_i64()
        .ok_or_else(|| error(path, format!("expected an integer, got {}", kind(json))))
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn code_points(text: &str, path: &str) -> Result<Vec<u8>, JsonError> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| error(path, "a byte above 255")))
        .collect()
}

fn to_value(
    json: &Json,
    schema: &Schema,
    names: &NamesRef<'_>,
    path: &str,
) -> Result<Value, JsonError> {
    let int = |json: &Json| -> Result<i32, JsonError> {
        i32::try_from(integer(json, path)?).map_err(|_| error(path, "out of the int range"))
    };
    Ok(match schema {
        Schema::Ref { name } => return to_value(json, lookup(name, names, path)?, names, path),
        Schema::Null => match json {
            Json::Null => Value::Null,
            other => return Err(error(path, format!("expected null, got {}", kind(other)))),
        },
        Schema::Boolean => Value::Boolean(
            json.as_bool()
                .ok_or_else(|| error(path, "expected a boolean"))?,
        ),
        Schema::Int => Value::Int(int(json)?),
        Schema::Date => Value::Date(int(json)?),
        Schema::TimeMillis => Value::TimeMillis(int(json)?),
        Schema::Long => Value::Long(integer(json, path)?),
        Schema::TimeMicros => Value::TimeMicros(integer(json, path)?),
        Schema::TimestampMillis => Value::TimestampMillis(integer(json, path)?),
        Schema::TimestampMicros => Value::TimestampMicros(integer(json, path)?),
        Schema::TimestampNanos => Value::TimestampNanos(integer(json, path)?),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(integer(json, path)?),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(integer(json, path)?),
        Schema::LocalTimestampNanos => Value::LocalTimestampNanos(integer(json, path)?),
        Schema::Float => Value::Float(
            json.as_f64()
                .ok_or_else(|| error(path, "expected a number"))? as f32,
        ),
        Schema::Double => Value::Double(
            json.as_f64()
                .ok_or_else(|| error(path, "expected a number"))?,
        ),
        Schema::String => Value::String(
            json.as_str()
                .ok_or_else(|| error(path, format!("expected a string, got {}", kind(json))))?
                .to_string(),
        ),
        Schema::Bytes => Value::Bytes(code_points(
            json.as_str()
                .ok_or_else(|| error(path, "expected a string of bytes"))?,
            path,
        )?),
        Schema::Fixed(fixed) => {
            let bytes = code_points(
                json.as_str()
                    .ok_or_else(|| error(path, "expected a string of bytes"))?,
                path,
            )?;
            if bytes.len() != fixed.size {
                return Err(error(path, format!("expected {} bytes", fixed.size)));
            }
            Value::Fixed(fixed.size, bytes)
        }
        Schema::Enum(enumeration) => {
            let symbol = json
                .as_str()
                .ok_or_else(|| error(path, "expected an enum symbol"))?;
            let index = enumeration
                .symbols
                .iter()
                .position(|known| known == symbol)
                .ok_or_else(|| error(path, format!("{symbol:?} is not a symbol of the enum")))?;
            Value::Enum(index as u32, symbol.to_string())
        }
        Schema::Array(array) => {
            let items = json
                .as_array()
                .ok_or_else(|| error(path, format!("expected an array, got {}", kind(json))))?;
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_value(item, &array.items, names, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
        Schema::Map(map) => {
            let entries = json
                .as_object()
                .ok_or_else(|| error(path, format!("expected an object, got {}", kind(json))))?;
            let mut values = HashMap::with_capacity(entries.len());
            for (key, item) in entries {
                values.insert(
                    key.clone(),
                    to_value(item, &map.types, names, &format!("{path}.{key}"))?,
                );
            }
            Value::Map(values)
        }
        Schema::Record(record) => {
            let object = json
                .as_object()
                .ok_or_else(|| error(path, format!("expected an object, got {}", kind(json))))?;
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let field_path = if path.is_empty() {
                    field.name.clone()
                } else {
                    format!("{path}.{}", field.name)
                };
                let value = match (object.get(&field.name), &field.default) {
                    (Some(item), _) => to_value(item, &field.schema, names, &field_path)?,
                    // A default is written for the first branch of a union (the spec), bare.
                    (None, Some(default)) => default_value(default, &field.schema, names)
                        .map_err(|message| error(&field_path, message))?,
                    (None, None) => return Err(error(&field_path, "missing, and has no default")),
                };
                fields.push((field.name.clone(), value));
            }
            if let Some(unknown) = object
                .keys()
                .find(|key| !record.fields.iter().any(|field| &field.name == *key))
            {
                return Err(error(path, format!("no field {unknown:?} in the schema")));
            }
            Value::Record(fields)
        }
        Schema::Union(union) => union_value(json, union.variants(), names, path)?,
        other => {
            return Err(error(
                path,
                format!("{other:?} is not supported in JSON input"),
            ));
        }
    })
}

fn default_value(default: &Json, schema: &Schema, names: &NamesRef<'_>) -> Result<Value, String> {
    match schema {
        Schema::Union(union) => {
            let first = union.variants().first().ok_or("an empty union")?;
            let inner = to_value(default, first, names, "").map_err(|e| e.message)?;
            Ok(Value::Union(0, Box::new(inner)))
        }
        other => to_value(default, other, names, "").map_err(|e| e.message),
    }
}

fn union_value(
    json: &Json,
    variants: &[Schema],
    names: &NamesRef<'_>,
    path: &str,
) -> Result<Value, JsonError> {
    if json.is_null() {
        let index = variants
            .iter()
            .position(|variant| matches!(variant, Schema::Null))
            .ok_or_else(|| error(path, "null, but the union has no null branch"))?;
        return Ok(Value::Union(index as u32, Box::new(Value::Null)));
    }
    // The encoding's own form: {"branch": value}.
    if let Some((branch, inner)) = single_entry(json) {
        for (index, variant) in variants.iter().enumerate() {
            if branch_names(variant).iter().any(|name| name == branch) {
                let value = to_value(inner, variant, names, path)?;
                return Ok(Value::Union(index as u32, Box::new(value)));
            }
        }
    }
    // Unwrapped: taken when exactly one non-null branch accepts it.
    let fits: Vec<(usize, Value)> = variants
        .iter()
        .enumerate()
        .filter(|(_, variant)| !matches!(variant, Schema::Null))
        .filter_map(|(index, variant)| {
            to_value(json, variant, names, path)
                .ok()
                .map(|value| (index, value))
        })
        .collect();
    match <[(usize, Value); 1]>::try_from(fits) {
        Ok([(index, value)]) => Ok(Value::Union(index as u32, Box::new(value))),
        Err(fits) if fits.is_empty() => Err(error(
            path,
            format!("{} fits no branch of the union", kind(json)),
        )),
        Err(_) => Err(error(
            path,
            "fits several branches of the union: wrap it as {\"<type>\": value}",
        )),
    }
}

fn single_entry(json: &Json) -> Option<(&str, &Json)> {
    let object = json.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object
        .iter()
        .next()
        .map(|(key, value)| (key.as_str(), value))
}

fn to_json(value: &Value, schema: &Schema, names: &NamesRef<'_>) -> Result<Json, JsonError> {
    let schema = match schema {
        Schema::Ref { name } => lookup(name, names, "")?,
        other => other,
    };
    Ok(match (value, schema) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => Json::Bool(*b),
        (Value::Int(n) | Value::Date(n) | Value::TimeMillis(n), _) => Json::from(*n),
        (
            Value::Long(n)
            | Value::TimeMicros(n)
            | Value::TimestampMillis(n)
            | Value::TimestampMicros(n)
            | Value::TimestampNanos(n)
            | Value::LocalTimestampMillis(n)
            | Value::LocalTimestampMicros(n)
            | Value::LocalTimestampNanos(n),
            _,
        ) => Json::from(*n),
        (Value::Float(n), _) => Json::from(f64::from(*n)),
        (Value::Double(n), _) => Json::from(*n),
        (Value::String(text), _) | (Value::Enum(_, text), _) => Json::String(text.clone()),
        (Value::Bytes(bytes) | Value::Fixed(_, bytes), _) => {
            Json::String(bytes.iter().map(|b| char::from(*b)).collect())
        }
        (Value::Array(items), Schema::Array(array)) => Json::Array(
            items
                .iter()
                .map(|item| to_json(item, &array.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Value::Map(entries), Schema::Map(map)) => {
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            let mut object = Map::new();
            for (key, item) in sorted {
                object.insert(key.clone(), to_json(item, &map.types, names)?);
            }
            Json::Object(object)
        }
        (Value::Record(fields), Schema::Record(record)) => {
            let mut object = Map::new();
            for ((name, item), field) in fields.iter().zip(&record.fields) {
                object.insert(name.clone(), to_json(item, &field.schema, names)?);
            }
            Json::Object(object)
        }
        (Value::Union(index, inner), Schema::Union(union)) => {
            let variant = union
                .variants()
                .get(*index as usize)
                .ok_or_else(|| error("", "a union branch out of range"))?;
            match **inner {
                Value::Null => Json::Null,
                _ => {
                    let mut object = Map::new();
                    let branch = branch_names(variant).swap_remove(0);
                    object.insert(branch, to_json(inner, variant, names)?);
                    Json::Object(object)
                }
            }
        }
        (other, schema) => {
            return Err(error(
                "",
                format!("{other:?} does not match {:?}", schema.name()),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Channel, EventType, Money, Outcome, PostPurchaseEvent, ReasonCode, TimestampMicros,
    };

    fn event() -> PostPurchaseEvent {
        PostPurchaseEvent {
            event_id: "evt-1".into(),
            idempotency_key: "key-1".into(),
            event_type: EventType::RefundIssued,
            case_id: "case-1".into(),
            order_id: "ord-1".into(),
            order_line_id: "ord-1-1".into(),
            customer_id: "cus-1".into(),
            sku: "SKU-1".into(),
            quantity: 1,
            reason: Some(ReasonCode::Defective),
            reason_text: None,
            amount: Some(Money {
                amount_minor: 1999,
                currency: "EUR".into(),
            }),
            method: None,
            channel: Channel::Web,
            outcome: Outcome::Completed,
            occurred_at: TimestampMicros::from_unix_micros(1_700_000_000_000_000),
            source_system: "returns-portal".into(),
            replacement_sku: None,
            warranty_resolution: None,
            disposition: None,
            attributes: [("note".to_string(), "é".to_string())].into(),
        }
    }

    #[test]
    fn a_record_goes_through_the_json_encoding_and_back() {
        let line = encode(&event()).expect("encodes");
        assert!(
            line.contains(r#""reason":{"boomerang.ReasonCode":"DEFECTIVE"}"#)
                || line.contains(r#""reason":{""#),
            "{line}"
        );
        assert!(line.contains(r#""reason_text":null"#), "{line}");
        let back: PostPurchaseEvent = decode(&line).expect("decodes");
        assert_eq!(back, event());
    }

    #[test]
    fn unwrapped_unions_and_left_out_defaults_are_read() {
        let mut json: Json =
            serde_json::from_str(&encode(&event()).expect("encodes")).expect("json");
        let object = json.as_object_mut().expect("object");
        object.insert("reason".into(), Json::String("DEFECTIVE".into()));
        object.insert(
            "amount".into(),
            serde_json::json!({"amount_minor": 1999, "currency": "EUR"}),
        );
        object.remove("method");
        object.remove("attributes");
        let back: PostPurchaseEvent = decode(&json.to_string()).expect("decodes");
        assert_eq!(back.reason, Some(ReasonCode::Defective));
        assert_eq!(back.amount, event().amount);
        assert_eq!(back.method, None);
        assert!(back.attributes.is_empty());
    }

    #[test]
    fn what_is_wrong_is_named_by_its_field() {
        let json: Json = serde_json::from_str(&encode(&event()).expect("encodes")).expect("json");
        let with = |field: &str, value: Option<Json>| {
            let mut json = json.clone();
            let object = json.as_object_mut().expect("object");
            match value {
                Some(value) => object.insert(field.into(), value),
                None => object.remove(field),
            };
            decode::<PostPurchaseEvent>(&json.to_string()).expect_err("rejected")
        };
        assert_eq!(with("quantity", Some(Json::from("one"))).path, "quantity");
        assert_eq!(with("sku", None).path, "sku");
        assert_eq!(
            with("channel", Some(Json::from("TELEPATHY"))).path,
            "channel"
        );
        assert!(decode::<PostPurchaseEvent>("{not json").is_err());
    }
}
