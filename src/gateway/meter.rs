//! Placeholder: replaced by the gateway's meter (reserve before forwarding,
//! settle after, shared by replicas through the grant Secret).
