//! What of a JSON value is read (`Reads`, the shape of a projection): everything, or some of
//! its members and elements, each with its own shape. Computed from a compiled definition
//! (`mapping::reads`, `jsonpath::Query::reads`) so that an answer is parsed keeping only what
//! someone reads (`decode::json_reading`); when in doubt, everything.

use std::collections::BTreeMap;

/// What of a value is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Reads {
    /// All of it: parsed whole.
    All,
    /// Only these parts; an object member no part names is left out, an array element no
    /// part reads becomes `null` (the array keeps its length), a scalar is kept as it is.
    Parts(Box<Parts>),
}

/// The parts of a value that are read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parts {
    /// Object members read by name, each with its shape (every member read by `any_member`
    /// already folded in: a named member's shape is its own and `any_member`'s union).
    members: BTreeMap<String, Reads>,
    /// Every member of an object (a wildcard), with this shape.
    any_member: Option<Reads>,
    /// Every element of an array, with this shape.
    elements: Option<Reads>,
}

/// One step from a value to a part of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The member of an object with this name.
    Member(String),
    /// Any element of an array (an index: arrays keep their length, so every element is
    /// read with the same shape).
    Element,
    /// Every member of an object and every element of an array (`*`).
    Any,
    /// A template variable's segment: the member of this name, or, when it is a number,
    /// the element at that index.
    MemberOrIndex(String),
}

impl Default for Reads {
    /// The safe reading: everything.
    fn default() -> Self {
        Reads::All
    }
}

impl Reads {
    /// Nothing inside the value, only that it is there (an object with no members kept, an
    /// array of `null`s of its length, a scalar as it is).
    pub fn nothing() -> Reads {
        Reads::Parts(Box::default())
    }

    /// True when the value is read whole.
    pub fn is_all(&self) -> bool {
        matches!(self, Reads::All)
    }

    /// The parts read, `None` when the value is read whole.
    pub fn parts(&self) -> Option<&Parts> {
        match self {
            Reads::All => None,
            Reads::Parts(p) => Some(p),
        }
    }

    /// `tail` read at the end of `path` from the value.
    pub fn at(path: &[Step], tail: Reads) -> Reads {
        path.iter().rev().fold(tail, |inner, step| {
            let mut p = Parts::default();
            match step {
                Step::Member(name) => {
                    p.members.insert(name.clone(), inner);
                }
                Step::Element => p.elements = Some(inner),
                Step::Any => {
                    p.any_member = Some(inner.clone());
                    p.elements = Some(inner);
                }
                Step::MemberOrIndex(seg) => {
                    if seg.parse::<usize>().is_ok() {
                        p.elements = Some(inner.clone());
                    }
                    p.members.insert(seg.clone(), inner);
                }
            }
            Reads::Parts(Box::new(p)).simplified()
        })
    }

    /// What this and `other` read together.
    pub fn union(self, other: Reads) -> Reads {
        match (self, other) {
            (Reads::All, _) | (_, Reads::All) => Reads::All,
            (Reads::Parts(mut a), Reads::Parts(b)) => {
                let Parts {
                    members,
                    any_member,
                    elements,
                } = *b;
                for (name, r) in members {
                    let merged = match a.members.remove(&name) {
                        Some(mine) => mine.union(r),
                        None => r,
                    };
                    a.members.insert(name, merged);
                }
                a.any_member = union_of(a.any_member.take(), any_member);
                a.elements = union_of(a.elements.take(), elements);
                if let Some(any) = &a.any_member {
                    for r in a.members.values_mut() {
                        *r = std::mem::replace(r, Reads::All).union(any.clone());
                    }
                }
                Reads::Parts(a).simplified()
            }
        }
    }

    /// Adds what `other` reads.
    pub fn add(&mut self, other: Reads) {
        *self = std::mem::replace(self, Reads::All).union(other);
    }

    /// Every member and every element read whole is the whole value.
    fn simplified(self) -> Reads {
        match &self {
            Reads::Parts(p)
                if p.any_member.as_ref().is_some_and(Reads::is_all)
                    && p.elements.as_ref().is_some_and(Reads::is_all) =>
            {
                Reads::All
            }
            _ => self,
        }
    }
}

fn union_of(a: Option<Reads>, b: Option<Reads>) -> Option<Reads> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.union(b)),
        (a, b) => a.or(b),
    }
}

impl Parts {
    /// The shape of the member `name`, `None` when it is not read.
    pub fn member(&self, name: &str) -> Option<&Reads> {
        self.members.get(name).or(self.any_member.as_ref())
    }

    /// The shape of every array element, `None` when none is read.
    pub fn elements(&self) -> Option<&Reads> {
        self.elements.as_ref()
    }

    /// The most members of an object that can be kept, when only named members are read:
    /// the capacity to make its map with, so that it is not grown member by member.
    pub fn most_members(&self) -> Option<usize> {
        self.any_member.is_none().then_some(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, tail: Reads) -> Reads {
        Reads::at(&[Step::Member(name.into())], tail)
    }

    #[test]
    fn paths_nest_and_unions_merge_members() {
        let a = Reads::at(
            &[
                Step::Member("a".into()),
                Step::Element,
                Step::Member("b".into()),
            ],
            Reads::All,
        );
        let c = member("c", Reads::nothing());
        let both = a.clone().union(c.clone());
        let p = both.parts().expect("parts");
        assert_eq!(p.member("a"), a.parts().and_then(|p| p.member("a")));
        assert_eq!(p.member("c"), Some(&Reads::nothing()));
        assert_eq!(p.member("d"), None);
        assert_eq!(both.clone().union(Reads::All), Reads::All);
        assert_eq!(Reads::nothing().union(both.clone()), both);
    }

    #[test]
    fn a_wildcard_reaches_every_member_and_element() {
        let any = Reads::at(&[Step::Any], member("x", Reads::All));
        let named = member("k", member("y", Reads::All));
        let p = any.union(named);
        let p = p.parts().expect("parts");
        let k = p.member("k").and_then(Reads::parts).expect("k read");
        assert_eq!(k.member("x"), Some(&Reads::All));
        assert_eq!(k.member("y"), Some(&Reads::All));
        assert_eq!(p.member("other"), Some(&member("x", Reads::All)));
        assert_eq!(p.elements(), Some(&member("x", Reads::All)));
        assert_eq!(Reads::at(&[Step::Any], Reads::All), Reads::All);
    }

    #[test]
    fn a_numeric_variable_segment_reads_a_member_and_the_elements() {
        let r = Reads::at(&[Step::MemberOrIndex("0".into())], Reads::All);
        let p = r.parts().expect("parts");
        assert_eq!(p.member("0"), Some(&Reads::All));
        assert_eq!(p.elements(), Some(&Reads::All));
        let named = Reads::at(&[Step::MemberOrIndex("n".into())], Reads::All);
        assert_eq!(named.parts().and_then(Parts::elements), None);
    }
}
