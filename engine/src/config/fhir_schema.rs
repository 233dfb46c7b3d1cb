//! Checks produced resources against the official FHIR R4 JSON Schema, one compiled validator
//! per resource type (`#/definitions/<Type>`), on request (`--fhir-schema FILE`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Why the FHIR JSON Schema file could not be read; each message starts with the path given.
#[derive(Debug, thiserror::Error)]
pub enum FhirSchemaError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: not JSON: {source}")]
    NotJson {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: no `definitions`")]
    NoDefinitions { path: String },
}

/// The FHIR JSON Schema and the validators compiled from it so far.
pub struct FhirSchema {
    definitions: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl FhirSchema {
    /// Reads the schema file (`fhir.schema.json`).
    pub fn load(path: &Path) -> Result<FhirSchema, FhirSchemaError> {
        let shown = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FhirSchemaError::Unreadable {
            path: shown(),
            reason: crate::config::load::io_reason(&e),
        })?;
        let mut root: Value =
            serde_json::from_str(&text).map_err(|source| FhirSchemaError::NotJson {
                path: shown(),
                source,
            })?;
        let definitions = root
            .get_mut("definitions")
            .map(Value::take)
            .ok_or_else(|| FhirSchemaError::NoDefinitions { path: shown() })?;
        Ok(FhirSchema {
            definitions,
            validators: Mutex::new(HashMap::new()),
        })
    }

    fn validator(&self, resource_type: &str) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self
            .validators
            .lock()
            .map_err(|_| "schema cache poisoned".to_string())?;
        if let Some(v) = cache.get(resource_type) {
            return Ok(v.clone());
        }
        if self.definitions.get(resource_type).is_none() {
            return Err(format!("`{resource_type}` is not an R4 resource type"));
        }
        let schema = json!({
            "$schema": "http://json-schema.org/draft-06/schema#",
            "$ref": format!("#/definitions/{resource_type}"),
            "definitions": self.definitions,
        });
        let v = Arc::new(
            jsonschema::validator_for(&schema)
                .map_err(|e| format!("the FHIR schema does not compile: {e}"))?,
        );
        cache.insert(resource_type.to_owned(), v.clone());
        Ok(v)
    }

    /// Problems of one resource, each with its JSON pointer; empty when valid.
    pub fn check(&self, resource: &Value) -> Vec<String> {
        let Some(t) = resource.get("resourceType").and_then(Value::as_str) else {
            return vec!["no resourceType".into()];
        };
        match self.validator(t) {
            Ok(v) => v
                .iter_errors(resource)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect(),
            Err(e) => vec![e],
        }
    }
}
