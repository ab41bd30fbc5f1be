//! The control plane: topology, volumes, placement of replica groups, routes, persisted in an embedded database.
