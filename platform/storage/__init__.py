"""The platform's storage on disk, for both fronts: bodies streamed to files and files named by
their sha256 (``files``), the local platform's inboxes (``mailboxes``), the cloud platform's blobs (``blobs``)."""
