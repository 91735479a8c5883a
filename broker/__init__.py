"""SubscriptionMgr: the checking XSUB/XPUB broker (`dctrl broker`)."""
