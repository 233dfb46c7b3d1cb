//! What the engine writes for others from the definitions: the OpenAPI document of the
//! configured routes, the Kubernetes and Istio manifests, and the Markdown reference of the
//! format.

pub mod manifests;
pub mod openapi;
pub mod reference;
