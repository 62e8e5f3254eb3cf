//! Label and field selectors as kube-apiserver parses and evaluates them.
//!
//! Owns the `?labelSelector=` grammar (equality- and set-based requirements, with the same key and
//! value validation as `k8s.io/apimachinery/pkg/labels`), conversion of a `metav1.LabelSelector`
//! object into a selector, the `?fieldSelector=` grammar (`=`, `==`, `!=` with `\` escaping as
//! `k8s.io/apimachinery/pkg/fields`), and the per-resource table of selectable fields with their
//! values (the registries' `ToSelectableFields`).
//!
//! # Guarantees
//! - Requirements are kept sorted by key, so [`LabelSelector`]'s `Display` is deterministic and
//!   matches the Go `Selector.String()` form (`a=b,c in (d,e),!f`).
//! - Parsing never panics on any input.
//!
//! # Caveats
//! - Every [`SelectorError`] is a client error (HTTP 400, reason `BadRequest`); none is retryable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// Why a label or field selector was rejected. All are client errors, none is retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement of a label selector is malformed or invalid.
    #[error("unable to parse requirement: {0}")]
    Requirement(String),
    /// The label selector text does not follow the grammar.
    #[error("{0}")]
    Syntax(String),
    /// A field selector term has no operator.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldTerm { selector: String, term: String },
    /// A field selector value holds an escape other than `\\`, `\,`, `\=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A field selector value holds an unescaped `,` or `=`.
    #[error("invalid field selector: unescaped character in value: {0:?}")]
    UnescapedRune(char),
    /// The resource does not support selecting on this field.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    /// A `metav1.LabelSelector` match expression names an unknown operator.
    #[error("{0:?} is not a valid label selector operator")]
    InvalidOperator(String),
    /// A `metav1.LabelSelector` object does not have the expected shape.
    #[error("invalid label selector: {0}")]
    Malformed(String),
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

/// The operator of one label requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value` (also true when the label is absent)
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)` (also true when the label is absent)
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5` (integer comparison)
    GreaterThan,
    /// `key<5` (integer comparison)
    LessThan,
}

/// One requirement of a label selector: a key, an operator and (for most operators) values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    /// Builds a validated requirement, as `labels.NewRequirement` does.
    pub fn new(
        key: &str,
        operator: Operator,
        values: impl IntoIterator<Item = String>,
    ) -> Result<Self, SelectorError> {
        let values: BTreeSet<String> = values.into_iter().collect();
        validate_label_key(key).map_err(SelectorError::Requirement)?;
        let count_error = match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                Some("for 'in', 'notin' operators, values set can't be empty")
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                Some("exact-match compatibility requires one single value")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                Some("values set must be empty for exists and does not exist")
            }
            Operator::GreaterThan | Operator::LessThan if values.len() != 1 => {
                Some("for 'Gt', 'Lt' operators, exactly one value is required")
            }
            _ => None,
        };
        if let Some(msg) = count_error {
            return Err(SelectorError::Requirement(format!(
                "values for key {key:?}: {msg}"
            )));
        }
        for value in &values {
            if matches!(operator, Operator::GreaterThan | Operator::LessThan)
                && value.parse::<i64>().is_err()
            {
                return Err(SelectorError::Requirement(format!(
                    "invalid value {value:?} for key {key:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                )));
            }
            let errs = label_value_errors(value);
            if !errs.is_empty() {
                return Err(SelectorError::Requirement(format!(
                    "invalid label value {value:?} for key {key:?}: {}",
                    errs.join("; ")
                )));
            }
        }
        Ok(Self {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(String::as_str)
    }

    /// Whether the label set satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                got.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => got.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(have) = got.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let mut vals = self.values.iter();
                let (Some(want), None) =
                    (vals.next().and_then(|v| v.parse::<i64>().ok()), vals.next())
                else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        f.write_str(op)?;
        let joined = self
            .values
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(",");
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            write!(f, "({joined})")
        } else {
            f.write_str(&joined)
        }
    }
}

/// A parsed label selector: the conjunction of its requirements.
///
/// The empty selector matches everything; [`LabelSelector::nothing`] (what a null
/// `metav1.LabelSelector` converts to) matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches no object.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the `?labelSelector=` syntax, e.g. `app=web,tier in (fe,be),!canary`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s);
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`), as
    /// `metav1.LabelSelectorAsSelector` does: null matches nothing, `{}` matches everything.
    pub fn from_label_selector(sel: &Value) -> Result<Self, SelectorError> {
        let obj = match sel {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(obj) => obj,
            other => {
                return Err(SelectorError::Malformed(format!(
                    "expected an object, found {other}"
                )))
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Some(value) = value.as_str() else {
                        return Err(SelectorError::Malformed(format!(
                            "matchLabels[{key:?}] must be a string"
                        )));
                    };
                    requirements.push(Requirement::new(
                        key,
                        Operator::Equals,
                        [value.to_string()],
                    )?);
                }
            }
            Some(_) => {
                return Err(SelectorError::Malformed(
                    "matchLabels must be an object".to_string(),
                ))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, expr) in exprs.iter().enumerate() {
                    let key = expr.get("key").and_then(Value::as_str).ok_or_else(|| {
                        SelectorError::Malformed(format!(
                            "matchExpressions[{i}].key must be a string"
                        ))
                    })?;
                    let op = expr.get("operator").and_then(Value::as_str).unwrap_or("");
                    let operator = match op {
                        "In" => Operator::In,
                        "NotIn" => Operator::NotIn,
                        "Exists" => Operator::Exists,
                        "DoesNotExist" => Operator::DoesNotExist,
                        other => return Err(SelectorError::InvalidOperator(other.to_string())),
                    };
                    let mut values = Vec::new();
                    match expr.get("values") {
                        None | Some(Value::Null) => {}
                        Some(Value::Array(vals)) => {
                            for v in vals {
                                let Some(v) = v.as_str() else {
                                    return Err(SelectorError::Malformed(format!(
                                        "matchExpressions[{i}].values must hold strings"
                                    )));
                                };
                                values.push(v.to_string());
                            }
                        }
                        Some(_) => {
                            return Err(SelectorError::Malformed(format!(
                                "matchExpressions[{i}].values must be an array"
                            )))
                        }
                    }
                    requirements.push(Requirement::new(key, operator, values)?);
                }
            }
            Some(_) => {
                return Err(SelectorError::Malformed(
                    "matchExpressions must be an array".to_string(),
                ))
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// The selector matching exactly the given labels (`labels.SelectorFromSet`), e.g. a
    /// Service's `spec.selector`. Keys and values are not validated.
    pub fn from_set(set: &BTreeMap<String, String>) -> Self {
        let requirements = set
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: BTreeSet::from([v.clone()]),
            })
            .collect();
        Self {
            requirements,
            nothing: false,
        }
    }

    /// Whether the label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(&labels_of(obj))
    }

    /// True for the selector that matches everything (no requirements).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The string labels of an object (`metadata.labels`); non-string values are skipped.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Ident,
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Gt,
    Lt,
    Bang,
    OpenPar,
    ClosePar,
    Comma,
    Eos,
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn lex(s: &str) -> Vec<(Tok, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(is_space);
        let Some(c) = rest.chars().next() else {
            out.push((Tok::Eos, String::new()));
            return out;
        };
        if is_special(c) {
            let (tok, len) = if rest.starts_with("!=") {
                (Tok::NotEquals, 2)
            } else if rest.starts_with("==") {
                (Tok::DoubleEquals, 2)
            } else {
                let tok = match c {
                    '=' => Tok::Equals,
                    '!' => Tok::Bang,
                    '(' => Tok::OpenPar,
                    ')' => Tok::ClosePar,
                    ',' => Tok::Comma,
                    '>' => Tok::Gt,
                    _ => Tok::Lt,
                };
                (tok, 1)
            };
            out.push((tok, rest[..len].to_string()));
            rest = &rest[len..];
        } else {
            let end = rest
                .find(|c: char| is_space(c) || is_special(c))
                .unwrap_or(rest.len());
            let lit = &rest[..end];
            let tok = match lit {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            };
            out.push((tok, lit.to_string()));
            rest = &rest[end..];
        }
    }
}

/// Whether `in`/`notin` are keywords (operator position) or plain identifiers (everywhere else).
#[derive(Clone, Copy)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    tokens: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn peek(&self, ctx: Ctx) -> (Tok, String) {
        let (tok, lit) = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::Eos, String::new()));
        match (ctx, tok) {
            (Ctx::Values, Tok::In | Tok::NotIn) => (Tok::Ident, lit),
            _ => (tok, lit),
        }
    }

    fn next(&mut self, ctx: Ctx) -> (Tok, String) {
        let item = self.peek(ctx);
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.peek(Ctx::Values);
            match tok {
                Tok::Ident | Tok::Bang => {
                    reqs.push(self.requirement()?);
                    let (t, l) = self.next(Ctx::Values);
                    match t {
                        Tok::Eos => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.peek(Ctx::Values);
                            if t2 != Tok::Ident && t2 != Tok::Bang {
                                return Err(SelectorError::Syntax(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Tok::Eos => return Ok(reqs),
                _ => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let err = |m: String| SelectorError::Requirement(m);
        let (mut tok, mut lit) = self.next(Ctx::Values);
        let negated = tok == Tok::Bang;
        if negated {
            (tok, lit) = self.next(Ctx::Values);
        }
        if tok != Tok::Ident {
            return Err(err(format!("found '{lit}', expected: identifier")));
        }
        let key = lit;
        validate_label_key(&key).map_err(SelectorError::Requirement)?;
        let (after, _) = self.peek(Ctx::Values);
        if after == Tok::Eos || after == Tok::Comma {
            let op = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Requirement::new(&key, op, Vec::new());
        }
        if negated {
            // `!key` takes no operator; what follows must end the requirement.
            let (_, l) = self.peek(Ctx::Values);
            return Err(SelectorError::Syntax(format!(
                "found '{l}', expected: ',' or 'end of string'"
            )));
        }
        let (op_tok, op_lit) = self.next(Ctx::KeyAndOperator);
        let operator = match op_tok {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::NotEquals => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            _ => {
                return Err(err(format!(
                    "found '{op_lit}', expected: '=', '!=', '==', 'in', notin'"
                )))
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.set_values()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, operator, values)
    }

    fn set_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let err = |m: String| SelectorError::Requirement(m);
        let (tok, lit) = self.next(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(err(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.peek(Ctx::Values);
        match tok {
            Tok::Ident | Tok::Comma => {
                let values = self.identifier_list()?;
                let (tok, lit) = self.next(Ctx::Values);
                if tok != Tok::ClosePar {
                    return Err(err(format!("found '{lit}', expected: ')'")));
                }
                Ok(values)
            }
            Tok::ClosePar => {
                self.next(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(err(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn identifier_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let err = |m: String| SelectorError::Requirement(m);
        let mut values: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.next(Ctx::Values);
            match tok {
                Tok::Ident => {
                    values.push(lit);
                    let (t2, l2) = self.peek(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosePar => return Ok(values),
                        _ => return Err(err(format!("found '{l2}', expected: ',' or ')'"))),
                    }
                }
                Tok::Comma => {
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    let (t2, _) = self.peek(Ctx::Values);
                    if t2 == Tok::ClosePar {
                        values.push(String::new());
                        return Ok(values);
                    }
                    if t2 == Tok::Comma {
                        self.next(Ctx::Values);
                        values.push(String::new());
                    }
                }
                _ => return Err(err(format!("found '{lit}', expected: ',', or identifier"))),
            }
        }
    }

    fn exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, _) = self.peek(Ctx::Values);
        if tok == Tok::Eos || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.next(Ctx::Values);
        if tok == Tok::Ident {
            Ok(vec![lit])
        } else {
            Err(SelectorError::Requirement(format!(
                "found '{lit}', expected: identifier"
            )))
        }
    }
}

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(e)) => {
                (f.is_ascii_lowercase() || f.is_ascii_digit())
                    && (e.is_ascii_lowercase() || e.is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }
            _ => false,
        }
    };
    if !s.split('.').all(label_ok) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// The reasons `key` is not a valid label key (a qualified name), as `IsQualifiedName` gives them.
pub fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|e| format!("prefix part {e}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!("a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !is_qualified_name_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

/// The reasons `value` is not a valid label value, as `IsValidLabelValue` gives them.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let errs = label_key_errors(key);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}: {}", errs.join("; ")))
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------------

/// The operator of one field requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOperator {
    /// `field=value` or `field==value`
    Equals,
    /// `field!=value`
    NotEquals,
}

/// One term of a field selector, with its value unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    pub value: String,
}

/// A parsed field selector: the conjunction of its terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses the `?fieldSelector=` syntax, e.g. `spec.nodeName=n1,status.phase!=Failed`.
    /// Values may escape `\`, `,` and `=` with a backslash.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = split_terms(s);
        terms.sort_unstable();
        let mut requirements = Vec::new();
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let Some((field, operator, rhs)) = split_term(term) else {
                return Err(SelectorError::FieldTerm {
                    selector: s.to_string(),
                    term: term.to_string(),
                });
            };
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator,
                value: unescape_value(rhs)?,
            });
        }
        Ok(Self { requirements })
    }

    /// Whether every term holds; `fields` gives a field's value, `None` counting as `""`
    /// (as the apiserver's `fields.Set` does for absent fields).
    pub fn matches(&self, fields: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let have = fields(&r.field).unwrap_or_default();
            match r.operator {
                FieldOperator::Equals => have == r.value,
                FieldOperator::NotEquals => have != r.value,
            }
        })
    }

    /// Whether the object of resource `group`/`plural` satisfies every term (see [`field_value`]).
    pub fn matches_object(&self, group: &str, plural: &str, obj: &Value) -> bool {
        self.matches(&|f| field_value(group, plural, obj, f))
    }

    /// The terms, sorted as parsed.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// The field names of the terms (possibly repeated), e.g. to check them against
    /// [`supported_fields`].
    pub fn fields(&self) -> impl Iterator<Item = &String> {
        self.requirements.iter().map(|r| &r.field)
    }

    /// The value `field` must equal, if a term demands it (e.g. `spec.nodeName` for a kubelet's
    /// watch), like `fields.Selector.RequiresExactMatch`.
    pub fn exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// True when there are no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every field against [`supported_fields`] and rewrites legacy aliases
    /// (`spec.host` → `spec.nodeName` for pods), as the apiserver's field label conversion does.
    pub fn validate_for(&self, group: &str, plural: &str) -> Result<Self, SelectorError> {
        let supported = supported_fields(group, plural);
        let mut requirements = Vec::with_capacity(self.requirements.len());
        for r in &self.requirements {
            let field = match (group, plural, r.field.as_str()) {
                ("", "pods", "spec.host") => "spec.nodeName",
                (_, _, f) if supported.contains(&f) => f,
                (_, _, f) => return Err(SelectorError::UnsupportedField(f.to_string())),
            };
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator: r.operator,
                value: r.value.clone(),
            });
        }
        Ok(Self { requirements })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match r.operator {
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", r.field, escape_value(&r.value))?;
        }
        Ok(())
    }
}

/// Escapes `\`, `,` and `=` in a field selector value.
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, operator) in [
            ("!=", FieldOperator::NotEquals),
            ("==", FieldOperator::Equals),
            ("=", FieldOperator::Equals),
        ] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], operator, rhs));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::InvalidEscape(format!("\\{c}")));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(SelectorError::UnescapedRune(c)),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidEscape("\\".to_string()));
    }
    Ok(out)
}

const META_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];
const CORE_EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
const EVENTS_V1_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
];
const SECRET_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "type"];
const NAMESPACE_FIELDS: &[&str] = &["metadata.name", "status.phase"];
const NODE_FIELDS: &[&str] = &["metadata.name", "spec.unschedulable"];
const SERVICE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.clusterIP",
    "spec.type",
];
const REPLICAS_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.replicas"];
const JOB_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.successful"];
const CSR_FIELDS: &[&str] = &["metadata.name", "spec.signerName"];

/// The field labels the apiserver accepts in `?fieldSelector=` for a resource (its field label
/// conversion); `metadata.name` and `metadata.namespace` for resources without their own list.
pub fn supported_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "pods") => POD_FIELDS,
        ("", "events") => CORE_EVENT_FIELDS,
        ("events.k8s.io", "events") => EVENTS_V1_FIELDS,
        ("", "secrets") => SECRET_FIELDS,
        ("", "namespaces") => NAMESPACE_FIELDS,
        ("", "nodes") => NODE_FIELDS,
        ("", "services") => SERVICE_FIELDS,
        ("", "replicationcontrollers") | ("apps", "replicasets") => REPLICAS_FIELDS,
        ("batch", "jobs") => JOB_FIELDS,
        ("certificates.k8s.io", "certificatesigningrequests") => CSR_FIELDS,
        _ => META_FIELDS,
    }
}

/// The value of a selectable field of an object (the registries' `ToSelectableFields`), or
/// `None` when the resource does not support the field. Supported fields that are absent from
/// the object yield their zero value (`""`, `"0"`, `"false"`).
pub fn field_value(group: &str, plural: &str, obj: &Value, field: &str) -> Option<String> {
    if !supported_fields(group, plural).contains(&field) {
        return None;
    }
    let text = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let int = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string()
    };
    let boolean = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string()
    };
    // Either event shape may be stored; read the requested name first, then the other one.
    let either = |a: &str, b: &str| {
        let v = text(a);
        if v.is_empty() {
            text(b)
        } else {
            v
        }
    };
    let value = match (group, plural, field) {
        (_, _, "metadata.name") => text("/metadata/name"),
        (_, _, "metadata.namespace") => text("/metadata/namespace"),
        ("", "pods", "spec.hostNetwork") => boolean("/spec/hostNetwork"),
        ("", "pods", "status.podIP") => {
            let first = text("/status/podIPs/0/ip");
            if first.is_empty() {
                text("/status/podIP")
            } else {
                first
            }
        }
        // Accepted by the conversion but not part of the selectable set: always empty.
        ("", "pods", "status.podIPs") => String::new(),
        ("", "nodes", "spec.unschedulable") => boolean("/spec/unschedulable"),
        (_, _, "status.replicas") => int("/status/replicas"),
        ("batch", "jobs", "status.successful") => int("/status/succeeded"),
        ("", "events", "source") => {
            let component = either("/source/component", "/deprecatedSource/component");
            if component.is_empty() {
                text("/reportingController")
            } else {
                component
            }
        }
        ("", "events", "reportingComponent")
        | ("events.k8s.io", "events", "reportingController") => text("/reportingController"),
        ("", "events", f) if f.starts_with("involvedObject.") => {
            let sub = &f["involvedObject.".len()..];
            either(
                &format!("/involvedObject/{sub}"),
                &format!("/regarding/{sub}"),
            )
        }
        ("events.k8s.io", "events", f) if f.starts_with("regarding.") => {
            let sub = &f["regarding.".len()..];
            either(
                &format!("/regarding/{sub}"),
                &format!("/involvedObject/{sub}"),
            )
        }
        (_, _, f) => text(&format!("/{}", f.replace('.', "/"))),
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_ok(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn parse_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   ", "\t"] {
            let sel = parse_ok(s);
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[])));
            assert!(sel.matches(&labels(&[("a", "b")])));
        }
    }

    #[test]
    fn equality_requirements() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(parse_ok("app=web").matches(&l));
        assert!(parse_ok("app==web").matches(&l));
        assert!(parse_ok("app = web , tier=fe").matches(&l));
        assert!(!parse_ok("app=db").matches(&l));
        assert!(parse_ok("app!=db").matches(&l));
        assert!(!parse_ok("app!=web").matches(&l));
        // != matches when the label is missing.
        assert!(parse_ok("missing!=x").matches(&l));
        // empty value
        assert!(parse_ok("empty=").matches(&labels(&[("empty", "")])));
        assert!(!parse_ok("empty=").matches(&labels(&[])));
        assert!(parse_ok("a=,b=c").matches(&labels(&[("a", ""), ("b", "c")])));
    }

    #[test]
    fn set_requirements() {
        let l = labels(&[("env", "prod"), ("tier", "fe")]);
        assert!(parse_ok("env in (prod,staging)").matches(&l));
        assert!(parse_ok("env in(prod)").matches(&l));
        assert!(!parse_ok("env in (dev)").matches(&l));
        assert!(parse_ok("env notin (dev,qa)").matches(&l));
        assert!(!parse_ok("env notin (prod)").matches(&l));
        assert!(parse_ok("missing notin (prod)").matches(&l));
        assert!(!parse_ok("missing in (prod)").matches(&l));
        assert!(parse_ok("env").matches(&l));
        assert!(!parse_ok("missing").matches(&l));
        assert!(parse_ok("!missing").matches(&l));
        assert!(!parse_ok("!env").matches(&l));
        assert!(parse_ok("env,tier,!canary").matches(&l));
        // `in`/`notin` are plain values inside a set and keys at requirement start.
        assert!(parse_ok("k in (in,notin)").matches(&labels(&[("k", "notin")])));
        assert!(parse_ok("in=x").matches(&labels(&[("in", "x")])));
    }

    #[test]
    fn empty_values_in_sets() {
        assert!(parse_ok("x in ()").matches(&labels(&[("x", "")])));
        let sel = parse_ok("x in (foo,,baz),y,z notin ()");
        assert_eq!(sel.to_string(), "x in (,baz,foo),y,z notin ()");
        assert!(parse_ok("x in (,a)").matches(&labels(&[("x", "")])));
        assert!(parse_ok("x in (a,)").matches(&labels(&[("x", "")])));
    }

    #[test]
    fn gt_lt() {
        let l = labels(&[("n", "5"), ("s", "abc")]);
        assert!(parse_ok("n>4").matches(&l));
        assert!(!parse_ok("n>5").matches(&l));
        assert!(parse_ok("n<6").matches(&l));
        assert!(!parse_ok("s<6").matches(&l));
        assert!(!parse_ok("missing>1").matches(&l));
        assert!(parse_err("n>x").contains("must be an integer"));
    }

    #[test]
    fn string_form_is_sorted_and_canonical() {
        let sel = parse_ok("z=1, a in (c,b), !m, k, q!=2, e==3");
        assert_eq!(sel.to_string(), "a in (b,c),e==3,k,!m,q!=2,z=1");
        let again = parse_ok(&sel.to_string());
        assert_eq!(again, sel);
    }

    #[test]
    fn qualified_keys() {
        let l = labels(&[("app.kubernetes.io/name", "web")]);
        assert!(parse_ok("app.kubernetes.io/name=web").matches(&l));
        assert!(!parse_ok("node-role.kubernetes.io/control-plane").is_empty());
        assert!(parse_err("Example.com/x=y").contains("prefix part"));
        assert!(parse_err("/x=y").contains("prefix part must be non-empty"));
        assert!(parse_err("a/b/c=y").contains("a qualified name"));
        assert!(parse_err("-bad=y").contains("name part must consist"));
        assert!(parse_err(&format!("{}=y", "k".repeat(64))).contains("no more than 63"));
        assert!(
            parse_ok(&format!("{}=y", "k".repeat(63)))
                .requirements()
                .len()
                == 1
        );
    }

    #[test]
    fn value_validation() {
        let e = parse_err(&format!("a={}", "v".repeat(64)));
        assert!(
            e.starts_with("unable to parse requirement: invalid label value"),
            "{e}"
        );
        assert!(e.contains("must be no more than 63 characters"), "{e}");
        assert!(parse_err("a=-x").contains("a valid label must be an empty string"));
        assert!(parse_err("a in (ok,bad_)").contains("\"bad_\""));
        assert!(parse_ok("a=x_y.z-1").requirements().len() == 1);
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            parse_err("a=b,"),
            "found '', expected: identifier after ','"
        );
        assert_eq!(
            parse_err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("a b"),
            "unable to parse requirement: found 'b', expected: '=', '!=', '==', 'in', notin'"
        );
        assert_eq!(
            parse_err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            parse_err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("a=b c"),
            "found 'c', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            parse_err("!a=b"),
            "found '=', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert!(parse_err("a in (b c)").contains("expected: ',' or ')'"));
        assert!(parse_ok("a==").matches(&labels(&[("a", "")])));
    }

    #[test]
    fn unicode_and_odd_input_does_not_panic() {
        for s in [
            "é=ü",
            "a=é",
            "ü in (é)",
            "((((",
            ")))",
            "!!!",
            "a!==b",
            "=",
            "a=b=c",
            "a,,b",
        ] {
            let _ = LabelSelector::parse(s);
        }
    }

    #[test]
    fn from_label_selector_object() {
        let sel = LabelSelector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "zone", "operator": "Exists"}
            ]
        }))
        .expect("valid selector");
        assert_eq!(
            sel.to_string(),
            "app=web,!canary,env notin (dev),tier in (be,fe),zone"
        );
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("zone", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "fe")])));

        let everything = LabelSelector::from_label_selector(&json!({})).expect("empty");
        assert!(everything.is_empty());
        assert!(everything.matches(&labels(&[])));

        let nothing = LabelSelector::from_label_selector(&Value::Null).expect("null");
        assert!(!nothing.is_empty());
        assert!(!nothing.matches(&labels(&[])));

        let bad_op = LabelSelector::from_label_selector(&json!({
            "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]
        }));
        assert_eq!(
            bad_op.map_err(|e| e.to_string()),
            Err("\"Equals\" is not a valid label selector operator".to_string())
        );
        let empty_in = LabelSelector::from_label_selector(&json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }));
        assert!(empty_in.is_err());
        let exists_with_values = LabelSelector::from_label_selector(&json!({
            "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
        }));
        assert!(exists_with_values.is_err());
        assert!(LabelSelector::from_label_selector(&json!({"matchLabels": {"a": 1}})).is_err());
        assert!(LabelSelector::from_label_selector(&json!("a=b")).is_err());
        assert!(
            LabelSelector::from_label_selector(&json!({"matchLabels": {"bad key": "x"}})).is_err()
        );
    }

    #[test]
    fn from_set_and_object() {
        let sel = LabelSelector::from_set(&labels(&[("b", "2"), ("a", "1")]));
        assert_eq!(sel.to_string(), "a=1,b=2");
        let pod = json!({"metadata": {"labels": {"a": "1", "b": "2", "c": "3"}}});
        assert!(sel.matches_object(&pod));
        assert!(!sel.matches_object(&json!({"metadata": {}})));
        assert!(LabelSelector::from_set(&BTreeMap::new()).is_empty());
    }

    // ---- field selectors ----

    fn fields_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |f| {
            pairs
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn field_selector_parse_and_match() {
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").expect("parses");
        assert_eq!(sel.requirements().len(), 2);
        assert_eq!(
            sel.fields().collect::<Vec<_>>(),
            ["spec.nodeName", "status.phase"]
        );
        let f = fields_of(&[("spec.nodeName", "n1"), ("status.phase", "Running")]);
        assert!(sel.matches(&f));
        let g = fields_of(&[("spec.nodeName", "n1"), ("status.phase", "Failed")]);
        assert!(!sel.matches(&g));
        assert_eq!(sel.exact_match("spec.nodeName"), Some("n1"));
        assert_eq!(sel.exact_match("status.phase"), None);

        let dbl = FieldSelector::parse("metadata.name==x").expect("parses");
        assert!(dbl.matches(&fields_of(&[("metadata.name", "x")])));
        // absent fields compare as empty
        assert!(FieldSelector::parse("spec.nodeName=")
            .expect("parses")
            .matches(&fields_of(&[])));
        assert!(FieldSelector::parse("spec.nodeName!=")
            .expect("parses")
            .matches(&fields_of(&[("spec.nodeName", "n")])));
        assert!(FieldSelector::parse("").expect("parses").is_empty());
        assert!(FieldSelector::parse(",,").expect("parses").is_empty());
    }

    #[test]
    fn field_selector_escaping() {
        let sel = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").expect("parses");
        assert_eq!(sel.requirements()[0].value, r"a,b=c\d");
        assert_eq!(sel.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(
            FieldSelector::parse(r"a=b\x").map_err(|e| e.to_string()),
            Err(r"invalid field selector: invalid escape sequence: \x".to_string())
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").map_err(|e| e.to_string()),
            Err(r"invalid field selector: invalid escape sequence: \".to_string())
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").map_err(|e| e.to_string()),
            Err("invalid field selector: unescaped character in value: '='".to_string())
        );
        assert_eq!(
            FieldSelector::parse("a=b,nonsense").map_err(|e| e.to_string()),
            Err("invalid selector: 'a=b,nonsense'; can't understand 'nonsense'".to_string())
        );
    }

    #[test]
    fn field_selector_validation_and_aliases() {
        let sel = FieldSelector::parse("spec.host=n1").expect("parses");
        let canon = sel.validate_for("", "pods").expect("supported");
        assert_eq!(canon.exact_match("spec.nodeName"), Some("n1"));
        assert_eq!(
            FieldSelector::parse("spec.bogus=1")
                .expect("parses")
                .validate_for("", "pods")
                .map_err(|e| e.to_string()),
            Err("field label not supported: spec.bogus".to_string())
        );
        assert!(FieldSelector::parse("metadata.namespace=x")
            .expect("parses")
            .validate_for("", "nodes")
            .is_err());
        assert!(FieldSelector::parse("metadata.namespace=x")
            .expect("parses")
            .validate_for("", "configmaps")
            .is_ok());
    }

    #[test]
    fn pod_field_values() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                     "serviceAccountName": "default"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}], "podIP": "10.0.0.5"}
        });
        let v = |f| field_value("", "pods", &pod, f);
        assert_eq!(v("metadata.name").as_deref(), Some("p"));
        assert_eq!(v("metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(v("spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(v("spec.restartPolicy").as_deref(), Some("Always"));
        assert_eq!(
            v("spec.schedulerName").as_deref(),
            Some("default-scheduler")
        );
        assert_eq!(v("spec.serviceAccountName").as_deref(), Some("default"));
        assert_eq!(v("spec.hostNetwork").as_deref(), Some("false"));
        assert_eq!(v("status.phase").as_deref(), Some("Running"));
        assert_eq!(v("status.podIP").as_deref(), Some("10.0.0.5"));
        assert_eq!(v("status.nominatedNodeName").as_deref(), Some(""));
        assert_eq!(v("spec.containers"), None);

        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Succeeded").expect("parses");
        assert!(sel.matches_object("", "pods", &pod));
        let unscheduled = FieldSelector::parse("spec.nodeName=").expect("parses");
        assert!(!unscheduled.matches_object("", "pods", &pod));
    }

    #[test]
    fn other_field_values() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        assert_eq!(
            field_value("", "nodes", &node, "spec.unschedulable").as_deref(),
            Some("true")
        );
        assert_eq!(
            field_value("", "nodes", &json!({}), "spec.unschedulable").as_deref(),
            Some("false")
        );

        let secret = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls"});
        assert_eq!(
            field_value("", "secrets", &secret, "type").as_deref(),
            Some("kubernetes.io/tls")
        );

        let ns = json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}});
        assert_eq!(
            field_value("", "namespaces", &ns, "status.phase").as_deref(),
            Some("Active")
        );

        let rs = json!({"status": {"replicas": 3}});
        assert_eq!(
            field_value("apps", "replicasets", &rs, "status.replicas").as_deref(),
            Some("3")
        );
        let job = json!({"status": {"succeeded": 1}});
        assert_eq!(
            field_value("batch", "jobs", &job, "status.successful").as_deref(),
            Some("1")
        );

        let svc = json!({"spec": {"clusterIP": "None", "type": "ClusterIP"}});
        assert_eq!(
            field_value("", "services", &svc, "spec.clusterIP").as_deref(),
            Some("None")
        );

        let ev = json!({
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1",
                               "apiVersion": "v1", "fieldPath": "spec.containers{c}"},
            "reason": "Pulled", "type": "Normal", "source": {"component": "kubelet"},
            "reportingComponent": "kubelet", "reportingController": "kubelet"
        });
        let v = |f| field_value("", "events", &ev, f);
        assert_eq!(v("involvedObject.kind").as_deref(), Some("Pod"));
        assert_eq!(v("involvedObject.uid").as_deref(), Some("u1"));
        assert_eq!(
            v("involvedObject.fieldPath").as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(v("involvedObject.resourceVersion").as_deref(), Some(""));
        assert_eq!(v("reason").as_deref(), Some("Pulled"));
        assert_eq!(v("source").as_deref(), Some("kubelet"));
        assert_eq!(v("reportingComponent").as_deref(), Some("kubelet"));
        assert_eq!(v("type").as_deref(), Some("Normal"));

        let ev2 = json!({"regarding": {"kind": "Node", "name": "n1"}, "reportingController": "k"});
        assert_eq!(
            field_value("events.k8s.io", "events", &ev2, "regarding.kind").as_deref(),
            Some("Node")
        );
        assert_eq!(
            field_value("events.k8s.io", "events", &ev2, "reportingController").as_deref(),
            Some("k")
        );
        // core field names are read from either shape
        assert_eq!(
            field_value("", "events", &ev2, "involvedObject.name").as_deref(),
            Some("n1")
        );
        assert_eq!(
            field_value("", "events", &ev2, "source").as_deref(),
            Some("k")
        );
        assert_eq!(
            field_value("events.k8s.io", "events", &ev2, "involvedObject.kind"),
            None
        );

        let cm = json!({"metadata": {"name": "c", "namespace": "x"}});
        assert_eq!(
            field_value("", "configmaps", &cm, "metadata.namespace").as_deref(),
            Some("x")
        );
        assert_eq!(field_value("", "configmaps", &cm, "data"), None);
    }
}
