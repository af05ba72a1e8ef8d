"""The tiers of the store, behind one ``Tier`` protocol (``base``): an arena of slots
(``arena``, kind ``cxl``) and a directory of block files (``files``, kind ``nvme``). A new kind
of tier implements the protocol in a file of its own and registers its builder in
``registry.TIER_KINDS``."""
