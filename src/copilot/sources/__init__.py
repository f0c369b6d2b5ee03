"""Where routing state comes from: Diego BBS (and later Cloud Controller and platform registrations)."""
