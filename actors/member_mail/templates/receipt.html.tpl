% rebase('layout.html.tpl', title='Receipt')
<p>Hello {{name}},</p>
<p>we received your dues payment:</p>
<table>
% if sats is not None:
<tr><td>amount</td><td>{{btc(sats)}} BTC</td></tr>
% end
<tr><td>value</td><td>{{cad(cad_cents)}} CAD</td></tr>
% if rate:
<tr><td>rate</td><td>{{rate}} CAD/BTC (when the payment was first seen)</td></tr>
% end
% if txid:
<tr><td>transaction</td><td><code>{{txid}}:{{vout}}</code></td></tr>
% else:
<tr><td>paid by</td><td>{{method}}</td></tr>
% end
</table>
% if paid_through:
<p>Your dues are paid through {{paid_through}}.</p>
% end
<p>Thank you,<br>{{space}}</p>
