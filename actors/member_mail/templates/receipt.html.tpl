% rebase('layout.html.tpl', title='Receipt')
<p>Hello {{name}},</p>
<p>we received your dues payment:</p>
<table>
<tr><td>amount</td><td>{{btc(sats)}} BTC</td></tr>
<tr><td>value</td><td>{{cad(cad_cents)}} CAD</td></tr>
<tr><td>rate</td><td>{{rate}} CAD/BTC (when the payment was first seen)</td></tr>
<tr><td>transaction</td><td><code>{{txid}}:{{vout}}</code></td></tr>
</table>
<p>Your dues are paid through {{paid_through}}.</p>
<p>Thank you,<br>{{space}}</p>
