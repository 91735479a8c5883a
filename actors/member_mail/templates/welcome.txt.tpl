Subject: Welcome to {{space}}, {{name}}

Hello {{name}},

welcome to {{space}}! You are member "{{handle}}" on the {{plan}} plan:
{{cad(dues_cents)}} CAD per {{period}}.
% if address:

Pay your dues in bitcoin to your own address:

    {{address}}

or open this link in your wallet:

    {{uri}}

Every payment to this address is counted as yours; you get a receipt for each.
% else:

You can pay your dues at the space (cash or e-transfer); you get a receipt for each payment.
% end

See you at the space,
{{space}}
