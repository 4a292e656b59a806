//! Elastic training of an mrl checkpoint (importance ranking, router, curriculum); grows in the trainer issue.
