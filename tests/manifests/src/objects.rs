//! Parsing a document into its typed Kubernetes object by `apiVersion` and `kind`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use serde_json::Value;

use crate::crds::envoy_gateway::{EnvoyExtensionPolicy, EnvoyPatchPolicy};
use crate::crds::gateway_api::{Gateway, HttpRoute};
use crate::crds::inference::InferencePool;
use crate::crds::istio::{DestinationRule, EnvoyFilter};
use crate::roundtrip::{RoundTripError, typed};

/// A manifest object, typed.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// `v1/Namespace`.
    Namespace(Namespace),
    /// `v1/ServiceAccount`.
    ServiceAccount(ServiceAccount),
    /// `v1/ConfigMap`.
    ConfigMap(ConfigMap),
    /// `v1/Service`.
    Service(Service),
    /// `apps/v1/Deployment`.
    Deployment(Deployment),
    /// `policy/v1/PodDisruptionBudget`.
    PodDisruptionBudget(PodDisruptionBudget),
    /// `rbac.authorization.k8s.io/v1/Role`.
    Role(Role),
    /// `rbac.authorization.k8s.io/v1/ClusterRole`.
    ClusterRole(ClusterRole),
    /// `rbac.authorization.k8s.io/v1/RoleBinding`.
    RoleBinding(RoleBinding),
    /// `inference.networking.k8s.io/v1/InferencePool`.
    InferencePool(InferencePool),
    /// `gateway.networking.k8s.io/v1/Gateway`.
    Gateway(Gateway),
    /// `gateway.networking.k8s.io/v1/HTTPRoute`.
    HttpRoute(HttpRoute),
    /// `gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy`.
    EnvoyExtensionPolicy(EnvoyExtensionPolicy),
    /// `gateway.envoyproxy.io/v1alpha1/EnvoyPatchPolicy`.
    EnvoyPatchPolicy(EnvoyPatchPolicy),
    /// `networking.istio.io/v1alpha3/EnvoyFilter`.
    EnvoyFilter(EnvoyFilter),
    /// `networking.istio.io/v1/DestinationRule`.
    DestinationRule(DestinationRule),
}

/// Why a document is not a valid object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `apiVersion` or `kind` missing.
    #[error("no apiVersion/kind")]
    NoType,
    /// An `apiVersion`/`kind` pair this checker has no type for.
    #[error("unsupported type {0}/{1}")]
    Unsupported(String, String),
    /// The document does not fit its type.
    #[error("{0}/{1}: {2}")]
    Invalid(String, String, RoundTripError),
}

/// `(apiVersion, kind)` of a document.
pub fn type_of(value: &Value) -> Option<(&str, &str)> {
    Some((
        value.get("apiVersion")?.as_str()?,
        value.get("kind")?.as_str()?,
    ))
}

/// `metadata.name` of a document.
pub fn name_of(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}

/// Parses a document into its typed object, rejecting unknown fields.
pub fn parse_object(value: &Value) -> Result<Object, ObjectError> {
    let (api_version, kind) = type_of(value).ok_or(ObjectError::NoType)?;
    let wrap = |e: RoundTripError| ObjectError::Invalid(api_version.into(), kind.into(), e);
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(typed(value).map_err(wrap)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(value).map_err(wrap)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(value).map_err(wrap)?),
        ("v1", "Service") => Object::Service(typed(value).map_err(wrap)?),
        ("apps/v1", "Deployment") => Object::Deployment(typed(value).map_err(wrap)?),
        ("policy/v1", "PodDisruptionBudget") => {
            Object::PodDisruptionBudget(typed(value).map_err(wrap)?)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(value).map_err(wrap)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Object::ClusterRole(typed(value).map_err(wrap)?)
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            Object::RoleBinding(typed(value).map_err(wrap)?)
        }
        ("inference.networking.k8s.io/v1", "InferencePool") => {
            Object::InferencePool(typed(value).map_err(wrap)?)
        }
        ("gateway.networking.k8s.io/v1", "Gateway") => Object::Gateway(typed(value).map_err(wrap)?),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            Object::HttpRoute(typed(value).map_err(wrap)?)
        }
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy") => {
            Object::EnvoyExtensionPolicy(typed(value).map_err(wrap)?)
        }
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy") => {
            Object::EnvoyPatchPolicy(typed(value).map_err(wrap)?)
        }
        ("networking.istio.io/v1alpha3", "EnvoyFilter") => {
            Object::EnvoyFilter(typed(value).map_err(wrap)?)
        }
        ("networking.istio.io/v1", "DestinationRule") => {
            Object::DestinationRule(typed(value).map_err(wrap)?)
        }
        (a, k) => return Err(ObjectError::Unsupported(a.into(), k.into())),
    })
}
