Subject: Welcome to {{space}}, {{name}}

Hello {{name}},

welcome to {{space}}! You are member "{{handle}}" on the {{plan}} plan:
{{cad(dues_cents)}} CAD per {{period}}.

Pay your dues in bitcoin to your own address:

    {{address}}

or open this link in your wallet:

    {{uri}}

Every payment to this address is counted as yours; you get a receipt for each.

See you at the space,
{{space}}
