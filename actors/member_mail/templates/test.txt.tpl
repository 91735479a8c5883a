Subject: {{space}}: a test mail

This is a test mail from {{space}}'s member mail (dctrl mail send-test).
If you can read it, mail from {{space}} reaches you.
