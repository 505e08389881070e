//! Per-user variables checked against the connection's `variablesSchema` (JSON Schema), defaults filled in.
use std::collections::BTreeMap;

use serde_json::Value;

/// The variables a Job gets: the activation's, plus the schema's top-level `default`s for those it lacks, valid
/// against the schema. The error names the path and what is wrong, for a person.
pub fn effective(schema: Option<&Value>, vars: &BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>, String> {
    let Some(schema) = schema else { return Ok(vars.clone()) };
    let mut out = vars.clone();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            if let (false, Some(d)) = (out.contains_key(name), prop.get("default")) {
                out.insert(name.clone(), d.clone());
            }
        }
    }
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("the connection's variablesSchema is not a valid JSON Schema: {e}"))?;
    let instance = Value::Object(out.clone().into_iter().collect());
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "/".to_string() } else { path })
        })
        .collect();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(format!("spec.variables do not match the connection's variablesSchema: {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: Value) -> BTreeMap<String, Value> {
        v.as_object().unwrap().clone().into_iter().collect()
    }

    #[test]
    fn defaults_are_filled_and_valid_values_kept() {
        let schema = json!({"type": "object", "properties": {"org": {"type": "string"}, "limit": {"type": "integer", "default": 50, "maximum": 100}}, "required": ["org"]});
        let out = effective(Some(&schema), &vars(json!({"org": "acme"}))).unwrap();
        assert_eq!(out.get("limit"), Some(&json!(50)));
        assert_eq!(out.get("org"), Some(&json!("acme")));
    }

    #[test]
    fn violations_name_the_path() {
        let schema = json!({"type": "object", "properties": {"limit": {"type": "integer", "maximum": 100}}, "required": ["org"]});
        let err = effective(Some(&schema), &vars(json!({"limit": 500}))).unwrap_err();
        assert!(err.contains("/limit"), "{err}");
        assert!(err.contains("org"), "{err}");
    }

    #[test]
    fn no_schema_means_anything_goes() {
        let v = vars(json!({"a": [1, 2]}));
        assert_eq!(effective(None, &v).unwrap(), v);
    }

    #[test]
    fn an_invalid_schema_is_reported() {
        assert!(effective(Some(&json!({"type": 12})), &BTreeMap::new()).unwrap_err().contains("not a valid JSON Schema"));
    }
}
