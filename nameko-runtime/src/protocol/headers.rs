//! [`Headers`]: a message's headers, kept as a short list.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// A header's name: a `&'static str` for the names the runtime sets on every message (no copy),
/// a `String` for the names a message brings.
pub type HeaderName = Cow<'static, str>;

/// Message headers: names and JSON values (AMQP field tables map onto JSON one to one), in the
/// order they were set.
///
/// A message carries a handful of headers, so they are kept in one short list rather than a
/// map: looking one up reads the list, and the list takes one allocation. A name is
/// a `&'static str` or a `String` ([`HeaderName`]); setting a name already present replaces
/// its value in place. Two header lists are equal when they hold the same names with the same
/// values, in any order.
///
/// ```
/// use nameko::protocol::Headers;
/// use serde_json::json;
///
/// let mut headers = Headers::new();
/// headers.insert("nameko.language", json!("en-gb"));
/// headers.insert(String::from("nameko.user_id"), json!(7));
/// headers.insert("nameko.language", json!("fr-fr"));
/// assert_eq!(headers.get("nameko.language"), Some(&json!("fr-fr")));
/// assert_eq!(headers.len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct Headers {
    entries: Vec<(HeaderName, Slot)>,
}

/// A header's value: its own, or one shared by every message that carries it (a standalone
/// client's call id stack), which goes from the client to the worker without a copy.
#[derive(Debug, Clone)]
enum Slot {
    Own(Value),
    Shared(Arc<Value>),
}

impl Slot {
    fn get(&self) -> &Value {
        match self {
            Slot::Own(value) => value,
            Slot::Shared(value) => value,
        }
    }

    fn get_mut(&mut self) -> &mut Value {
        match self {
            Slot::Own(value) => value,
            Slot::Shared(value) => Arc::make_mut(value),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Slot::Own(value) => value,
            Slot::Shared(value) => Arc::unwrap_or_clone(value),
        }
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// No headers, with room for `capacity` without allocating again.
    pub fn with_capacity(capacity: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of the header `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|at| self.entries[at].1.get())
    }

    /// The value of the header `name`, if set, to change in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.position(name).map(|at| self.entries[at].1.get_mut())
    }

    /// Whether the header `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Sets the header `name` to `value`, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: Value) -> Option<Value> {
        self.set(name.into(), Slot::Own(value))
    }

    /// Sets the header `name` to a value shared with other messages (not copied).
    pub(crate) fn insert_shared(&mut self, name: impl Into<HeaderName>, value: Arc<Value>) {
        self.set(name.into(), Slot::Shared(value));
    }

    /// The value of the header `name` if it is shared with other messages.
    pub(crate) fn shared(&self, name: &str) -> Option<&Arc<Value>> {
        match &self.entries[self.position(name)?].1 {
            Slot::Shared(value) => Some(value),
            Slot::Own(_) => None,
        }
    }

    fn set(&mut self, name: HeaderName, slot: Slot) -> Option<Value> {
        match self.position(&name) {
            Some(at) => Some(std::mem::replace(&mut self.entries[at].1, slot).into_value()),
            None => {
                self.entries.push((name, slot));
                None
            }
        }
    }

    /// Removes the header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name)
            .map(|at| self.entries.remove(at).1.into_value())
    }

    /// Keeps only the headers for which `keep` returns `true`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        self.entries
            .retain_mut(|(name, value)| keep(name, value.get_mut()));
    }

    /// Moves every header of `other` into these (replacing any of the same name), leaving
    /// `other` empty.
    pub fn append(&mut self, other: &mut Headers) {
        if self.entries.is_empty() {
            std::mem::swap(&mut self.entries, &mut other.entries);
            return;
        }
        // The names of `other` differ from each other: each is looked for among these only
        // (not among those appended before it), however many `other` has.
        let mine = self.entries.len();
        self.entries.reserve(other.entries.len());
        for (name, slot) in other.entries.drain(..) {
            match self.entries[..mine].iter().position(|(n, _)| *n == name) {
                Some(at) => self.entries[at].1 = slot,
                None => self.entries.push((name, slot)),
            }
        }
    }

    /// Removes every header.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The headers, as names and values, in the order they were set.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries.iter())
    }

    /// The headers, as names and values to change in place, in the order they were set.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Value)> {
        self.entries
            .iter_mut()
            .map(|(name, value)| (&**name, value.get_mut()))
    }

    /// The headers' names, in the order they were set.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(name, _)| &**name)
    }

    /// The headers' values, in the order they were set.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.entries.iter().map(|(_, value)| value.get())
    }

    /// Headers whose names are known to differ (a field table's, a map's), taken as they are.
    pub(crate) fn from_unique(entries: Vec<(HeaderName, Value)>) -> Self {
        Headers {
            entries: entries
                .into_iter()
                .map(|(name, value)| (name, Slot::Own(value)))
                .collect(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|(n, _)| n == name)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(name, value)| other.get(name) == Some(value))
    }
}

impl Eq for Headers {}

impl serde::Serialize for Headers {
    /// As a map of names to values.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Headers {
    /// From a map of names to values (a name given twice keeps its last value).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, Value>::deserialize(deserializer)?;
        Ok(Headers::from_unique(
            map.into_iter()
                .map(|(name, value)| (HeaderName::Owned(name), value))
                .collect(),
        ))
    }
}

impl std::ops::Index<&str> for Headers {
    type Output = Value;

    /// The value of the header `name`.
    ///
    /// # Panics
    ///
    /// If there is no header `name`.
    fn index(&self, name: &str) -> &Value {
        match self.get(name) {
            Some(value) => value,
            None => panic!("no header {name:?}"),
        }
    }
}

impl<N: Into<HeaderName>> Extend<(N, Value)> for Headers {
    fn extend<I: IntoIterator<Item = (N, Value)>>(&mut self, headers: I) {
        for (name, value) in headers {
            self.insert(name, value);
        }
    }
}

impl<N: Into<HeaderName>> FromIterator<(N, Value)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, Value)>>(headers: I) -> Self {
        let mut all = Headers::new();
        all.extend(headers);
        all
    }
}

impl<N: Into<HeaderName>, const LEN: usize> From<[(N, Value); LEN]> for Headers {
    fn from(headers: [(N, Value); LEN]) -> Self {
        headers.into_iter().collect()
    }
}

impl IntoIterator for Headers {
    type Item = (HeaderName, Value);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self.entries.into_iter())
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The headers of a [`Headers`], as names and values ([`Headers::iter`]).
#[derive(Debug, Clone)]
pub struct Iter<'a>(std::slice::Iter<'a, (HeaderName, Slot)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (&**name, value.get()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// The headers of a [`Headers`], taken out as names and values (`Headers::into_iter`).
#[derive(Debug)]
pub struct IntoIter(std::vec::IntoIter<(HeaderName, Slot)>);

impl Iterator for IntoIter {
    type Item = (HeaderName, Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0
            .next()
            .map(|(name, value)| (name, value.into_value()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for IntoIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn setting_a_name_again_replaces_its_value_in_place() {
        let mut headers = Headers::from([("a", json!(1)), ("b", json!(2))]);
        assert_eq!(headers.insert("a", json!(3)), Some(json!(1)));
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [("a", &json!(3)), ("b", &json!(2))]
        );
        assert_eq!(headers.remove("a"), Some(json!(3)));
        assert_eq!(headers.remove("a"), None);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn appended_headers_replace_those_of_the_same_name() {
        let mut headers = Headers::from([("a", json!(1)), ("b", json!(2))]);
        let mut more = Headers::from([("b", json!(3)), ("c", json!(4))]);
        headers.append(&mut more);
        assert!(more.is_empty());
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [("a", &json!(1)), ("b", &json!(3)), ("c", &json!(4))]
        );
        let mut none = Headers::new();
        none.append(&mut headers);
        assert_eq!(none.len(), 3);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_shared_value_reads_and_changes_as_an_own_one() {
        let shared = Arc::new(json!(["standalone_rpc_proxy.call.1"]));
        let mut headers = Headers::new();
        headers.insert_shared("nameko.call_id_stack", shared.clone());
        assert_eq!(headers["nameko.call_id_stack"], *shared);
        assert!(headers.shared("nameko.call_id_stack").is_some());
        if let Some(Value::Array(stack)) = headers.get_mut("nameko.call_id_stack") {
            stack.push(json!("svc.m.2"));
        }
        // Changed in this message only.
        assert_eq!(*shared, json!(["standalone_rpc_proxy.call.1"]));
        assert_eq!(
            headers
                .remove("nameko.call_id_stack")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn equal_whatever_the_order() {
        let one = Headers::from([("a", json!(1)), ("b", json!(2))]);
        let other = Headers::from([(String::from("b"), json!(2)), ("a".into(), json!(1))]);
        assert_eq!(one, other);
        assert_ne!(one, Headers::from([("a", json!(1))]));
        assert_ne!(one, Headers::from([("a", json!(1)), ("b", json!(3))]));
    }

    #[test]
    fn serialized_as_a_map() {
        let headers = Headers::from([("b", json!([1])), ("a", json!("x"))]);
        let value = serde_json::to_value(&headers).unwrap();
        assert_eq!(value, json!({"a": "x", "b": [1]}));
        assert_eq!(serde_json::from_value::<Headers>(value).unwrap(), headers);
    }
}
