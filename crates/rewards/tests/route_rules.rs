//! The gateway's built-in registry and the services' own rule tables must
//! agree: the gateway refuses exactly what each service refuses.

use rewards_gateway::{DEFAULT_REGISTRY, RegistryFile};

#[test]
fn the_built_in_registry_matches_every_services_rules() {
    let registry = RegistryFile::parse(DEFAULT_REGISTRY).unwrap();
    let rules_of = |name: &str| registry.services.iter().find(|s| s.name == name).unwrap().routes.clone();
    assert_eq!(rules_of("auth-service"), rewards_auth::rules::route_rules());
    assert_eq!(rules_of("event-service"), rewards_events::rules::route_rules());
    let prefixes: Vec<(&str, &str)> = registry.services.iter().map(|s| (s.name.as_str(), s.prefix.as_str())).collect();
    assert_eq!(prefixes, [("auth-service", "/auth-service"), ("event-service", "/event-service")]);
}
