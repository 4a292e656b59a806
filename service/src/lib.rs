//! The mrl REST service and vector stores; grows in the service issue.
