//! Deserializers for the protocol's lists that refuse a declared length
//! over the list's bound before allocating, so that a small frame cannot
//! make the decoder reserve memory for millions of elements.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

use super::{MAX_DEVICES, MAX_RANGES};

/// A range list of at most [`MAX_RANGES`] elements.
pub(crate) fn ranges<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedVec { max: MAX_RANGES, element: PhantomData })
}

/// An optional range list of at most [`MAX_RANGES`] elements.
pub(crate) fn optional_ranges<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// A bounded list inside an `Option`.
    struct Ranges<T>(Vec<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ranges<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            ranges(deserializer).map(Ranges)
        }
    }

    Ok(Option::<Ranges<T>>::deserialize(deserializer)?.map(|r| r.0))
}

/// A device list of at most [`MAX_DEVICES`] elements.
pub(crate) fn devices<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedVec { max: MAX_DEVICES, element: PhantomData })
}

/// Most elements reserved before any has decoded.
const PREALLOCATE: usize = 256;

struct BoundedVec<T> {
    max: usize,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let declared = seq.size_hint().unwrap_or(0);
        if declared > self.max {
            return Err(A::Error::invalid_length(declared, &self));
        }
        // The declared length is untrusted: reserve for a bounded prefix and
        // grow with the elements that actually decode.
        let mut out = Vec::with_capacity(declared.min(PREALLOCATE));
        while let Some(element) = seq.next_element()? {
            if out.len() == self.max {
                return Err(A::Error::invalid_length(self.max + 1, &self));
            }
            out.push(element);
        }
        Ok(out)
    }
}
